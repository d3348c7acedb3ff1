#!/bin/sh
# The distribution's own archive entries with the components the driver needs: in
# /etc/apt/sources.list (one-line entries) and /etc/apt/sources.list.d/*.sources (deb822),
# every entry of suite CODENAME (and CODENAME-updates, -security) that has `main` gets
# the missing COMPONENTS; vendor repositories (other suites) are left alone.
# archive-components.sh MODE CODENAME COMPONENT...
#   MODE       check: print `missing=FILE` for each file that lacks one; apply: add them
#   CODENAME   the release's codename (trixie)
#   COMPONENT  the components (contrib)
# Exit: 0 (check and apply alike); non-zero only where a file cannot be written.
set -eu
mode=$1
codename=$2
shift 2
components="$*"

rewrite() {  # $1: file; prints the file with the components added
    awk -v codename="$codename" -v wanted="$components" '
        function ours(suite) {
            return suite == codename || suite == codename "-updates" ||
                   suite == codename "-security" || suite == codename "-backports"
        }
        function add(line, have,    n, w, i, out) {
            n = split(wanted, w, " ")
            out = line
            for (i = 1; i <= n; i++)
                if ((" " have " ") !~ (" " w[i] " ")) out = out " " w[i]
            return out
        }
        function flush(    i, n, w, j, hit) {  # a deb822 stanza: fields in any order
            hit = 0
            n = split(suites, w, " ")
            for (j = 2; j <= n; j++) if (ours(w[j])) hit = 1
            for (i = 1; i <= count; i++) {
                if (hit && stanza[i] ~ /^Components:/ && (" " stanza[i] " ") ~ / main /)
                    stanza[i] = add(stanza[i], stanza[i])
                print stanza[i]
            }
            count = 0; suites = ""
        }
        FILENAME ~ /\.sources$/ {
            if ($0 ~ /^[ \t]*$/) { flush(); print; next }
            if ($1 == "Suites:") suites = $0
            stanza[++count] = $0
            next
        }
        {
            if ($1 == "deb" || $1 == "deb-src") {
                f = 2
                if ($2 ~ /^\[/) { while (f <= NF && $f !~ /\]$/) f++; f++ }
                if (ours($(f + 1)) && (" " $0 " ") ~ / main /) { print add($0, $0); next }
            }
            print
        }
        END { flush() }' "$1"
}

for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    new=$(rewrite "$file")
    if [ "$new" != "$(cat "$file")" ]; then
        if [ "$mode" = check ]; then
            echo "missing=$file"
        else
            printf '%s\n' "$new" > "$file.tmp"
            chmod 644 "$file.tmp"
            mv "$file.tmp" "$file"
            echo "added $components to $file"
        fi
    fi
done
exit 0
