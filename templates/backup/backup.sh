#!/bin/sh
# Sent by tasks/steps/backup.py (operation `archived`) through ollama_fleet.tasks.kit.scripts.script_command;
# not installed on the host. POSIX sh and coreutils (sha256sum, tar, df, stat) only.
#
# backup.sh ROOT NAME BACKUP_DIR
# Write BACKUP_DIR/NAME, a tarball of the Ollama store mounted at ROOT (ROOT/models), and
# BACKUP_DIR/NAME.sha256 beside it. The manifests are copied first; then only the blobs
# they reference are read, each checked against its name (sha256-<hex>) before it is
# archived; SHA256SUMS inside lists every file. Says on success one line:
# `<tarball>: N manifests, N blobs (N bytes), sha256 <hex>`.
# Exit: 0 written; 1 failed: what it wrote is removed and stderr holds one line that
# starts with `store-error: ` (ollama_fleet.tasks.kit.report.ERROR_MARK) and says why.
root=$1
name=$2
dir=$3
models="$root/models"; out="$dir/$name"; stage="$dir/.staging-$name"
fail() {
  echo "store-error: $*" >&2; cd /
  rm -rf "$stage" "$out.partial" "$out.sha256.partial"; exit 1
}
[ -d "$models/manifests" ] || fail "no model in the store ($models/manifests does not exist)"
{ mkdir -p "$dir" && chmod 700 "$dir" && rm -rf "$stage" && mkdir -p "$stage/models"; } \
  || fail "$dir: cannot create the staging directory"
# 1. manifests first, frozen: a pull finishing now writes its manifest after its blobs
cp -a "$models/manifests" "$stage/models/manifests" || fail "cannot copy the manifests"
find "$stage/models/manifests" -type f -name '.*' -delete  # manifests still being written
cd "$stage" || fail "$stage: cannot enter"
find models/manifests -type f | LC_ALL=C sort > manifests.list
[ -s manifests.list ] || fail "no model in the store (no manifest under $models/manifests)"
# 2. only the blobs those manifests reference
: > blobs.list
while IFS= read -r m; do
  refs=$(grep -oE 'sha256[:-][0-9a-f]{64}' "$m" | cut -c8- | LC_ALL=C sort -u)
  [ -n "$refs" ] || fail "manifest ${m#models/manifests/}: references no blob"
  for h in $refs; do
    [ -f "$models/blobs/sha256-$h" ] \
      || fail "manifest ${m#models/manifests/}: blob sha256-$h is missing from the store"
    echo "sha256-$h" >> blobs.list
  done
done < manifests.list
LC_ALL=C sort -u blobs.list -o blobs.list
need=0
while IFS= read -r b; do need=$((need + $(stat -c %s "$models/blobs/$b"))); done < blobs.list
avail=$(df --output=avail -B1 "$dir" | tail -n 1 | tr -d ' ')
[ "$avail" -gt "$need" ] || fail "$dir: $avail bytes free, the tarball needs $need"
# 3. every blob checked against its name before it goes in
while IFS= read -r m; do
  sha256sum "$m" >> SHA256SUMS || fail "$m: cannot be read"
done < manifests.list
: > blobs.paths
while IFS= read -r b; do
  h=$(sha256sum < "$models/blobs/$b" | cut -c1-64)
  [ "sha256-$h" = "$b" ] || fail "blob $b: its content hashes to sha256-$h;" \
    "the blob is corrupt (pull the model again, then back up)"
  echo "$h  models/blobs/$b" >> SHA256SUMS
  echo "models/blobs/$b" >> blobs.paths
done < blobs.list
# 4. the tarball, hashed while it is written
: > failed
{ tar -cf - -C "$stage" SHA256SUMS models/manifests -C "$root" -T "$stage/blobs.paths" \
    || echo tar >> "$stage/failed"; } \
  | { tee "$out.partial" || echo tee >> "$stage/failed"; } | sha256sum > tar.sum
[ ! -s failed ] || fail "$out: writing the tarball failed ($(tr '\n' ' ' < failed))"
sum=$(cut -c1-64 tar.sum)
{ echo "$sum  $name" > "$out.sha256.partial" && mv "$out.partial" "$out" \
  && mv "$out.sha256.partial" "$out.sha256"; } || fail "$out: cannot be written"
echo "$out: $(wc -l < manifests.list) manifests, $(wc -l < blobs.list) blobs" \
  "($need bytes), sha256 $sum"
cd /; rm -rf "$stage"
