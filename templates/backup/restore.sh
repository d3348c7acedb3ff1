#!/bin/sh
# Sent by tasks/steps/backup.py (operation `restored`) through ollama_fleet.tasks.kit.scripts.script_command;
# not installed on the host. POSIX sh and coreutils (sha256sum, tar, cmp) only.
#
# restore.sh ROOT STAGE NAME SHA256
# Move the models of STAGE/backup.tar (uploaded from the operator's NAME) into the Ollama
# store mounted at ROOT (ROOT/models); STAGE is a directory beside the store, on its
# filesystem. The tarball's sha256 must be SHA256 and every file in it must match
# SHA256SUMS (blobs: their name too) before anything moves; then blobs go into place,
# manifests last, so a half-restored model never looks present; identical files already
# there are kept. Only regular files and directories are taken, with the store's modes
# (0644/0755: no set-uid, set-gid or sticky bit). Says on success one line:
# `NAME: N blobs moved in, N kept (identical), N manifests written, N unchanged`.
# Exit: 0 restored (STAGE removed); 1 failed: STAGE is removed and stderr holds one line
# that starts with `store-error: ` (ollama_fleet.tasks.kit.report.ERROR_MARK) and says why.
root=$1
stage=$2
name=$3
want=$4
models="$root/models"
fail() { echo "store-error: $*" >&2; cd /; rm -rf "$stage"; exit 1; }
cd "$stage" || fail "$stage: the upload is missing"
sum=$(sha256sum backup.tar | cut -c1-64)
[ "$sum" = "$want" ] || fail "$name: sha256 after the upload is $sum, $name.sha256 says $want"
mkdir x || fail "$stage/x: cannot be made"
why=$(tar -xf backup.tar -C x --no-same-owner --no-same-permissions 2>&1) \
  || fail "$name: cannot be extracted: $(printf '%s\n' "$why" | head -n 1)"
rm -f backup.tar
# a store holds plain files and directories: no link, device or fifo comes in, and every
# mode is the store's own (no set-uid, set-gid or sticky bit, nothing writable by others)
# (a hard link is a regular file with another name: it could point outside x, so none)
odd=$(find x \( ! -type f ! -type d \) -o \( -type f -links +1 \) | head -n 1)
[ -z "$odd" ] || fail "$name: ${odd#x/}: not a regular file or directory"
{ find x -type d -exec chmod 755 {} + && find x -type f -exec chmod 644 {} +; } \
  || fail "$name: modes cannot be set"
cd x || fail "$stage/x: cannot enter"
[ -f SHA256SUMS ] || fail "$name: no SHA256SUMS inside"
bad=$(grep ' models/blobs/' SHA256SUMS | while read -r h p; do
  [ "$p" = "models/blobs/sha256-$h" ] || { echo "${p#models/blobs/}"; break; }; done)
[ -z "$bad" ] || fail "$name: blob $bad: SHA256SUMS gives it another sha256 than its name"
if ! sha256sum -c --quiet --strict SHA256SUMS > ../check.out 2>&1; then
  bad=$(sed -n 's/: FAILED.*$//p' ../check.out | head -n 1)
  case $bad in models/blobs/*) bad="blob ${bad#models/blobs/}";; esac
  fail "$name: ${bad:-$(head -n 1 ../check.out)}: content does not match SHA256SUMS"
fi
mkdir -p "$models/blobs" "$models/manifests" || fail "$models: cannot create"
# blobs first: until its manifest lands, a model is not there for Ollama
find models/blobs -type f > ../blobs.list 2>/dev/null
moved=0; kept=0
while IFS= read -r f; do
  b=${f##*/}
  if cmp -s "$f" "$models/blobs/$b"; then kept=$((kept + 1)); continue; fi
  mv -f "$f" "$models/blobs/$b" || fail "blob $b: cannot be moved into $models/blobs"
  moved=$((moved + 1))
done < ../blobs.list
# manifests last, each an atomic rename on the store's filesystem
find models/manifests -type f | LC_ALL=C sort > ../manifests.list
written=0; same=0
while IFS= read -r f; do
  t="$root/$f"
  if cmp -s "$f" "$t"; then same=$((same + 1)); continue; fi
  { mkdir -p "${t%/*}" && mv -f "$f" "$t"; } || fail "${f#models/}: cannot be moved into place"
  written=$((written + 1))
done < ../manifests.list
cd /; rm -rf "$stage"
echo "$name: $moved blobs moved in, $kept kept (identical)," \
  "$written manifests written, $same unchanged"
