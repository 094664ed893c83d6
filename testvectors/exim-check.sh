#!/usr/bin/env bash
# Compare sign.json with Exim's ${prvs{address}{secret}{keynum}} expansion.
#
#   testvectors/exim-check.sh /path/to/exim [extra-LD_PRELOAD-libs]
#
# Exim always signs with a lifetime of 7 days from the current date, in the standard form,
# refuses secrets longer than 64 bytes, and takes its secret as a C string (no NUL bytes).
# So the vectors compared are those that sign (skip == ""), have lifetime 7, sub_address "",
# and a key of at most 64 bytes without a NUL byte; every other vector is listed as not compared.
# Each one runs `exim -C <minimal config> -be` under libfaketime at 12:00 UTC on the vector's date,
# with the expansion string on standard input.
# Key and address bytes are passed as \xHH escapes, which Exim's string expansion decodes.
#
# Needs: python3, faketime (Debian package "faketime"). See README.md for how to get an Exim
# binary without installing it (Debian's packages conflict with other MTAs), including the
# nss_wrapper trick for its compiled-in "Debian-exim" user, passed as the second argument.
set -euo pipefail

exim=${1:?usage: exim-check.sh /path/to/exim [extra-LD_PRELOAD-libs]}
extra_preload=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
libfaketime=${LIBFAKETIME:-/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1}
[ -r "$libfaketime" ] || { echo "libfaketime not found at $libfaketime (set LIBFAKETIME)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/spool" "$work/log"
cat >"$work/exim.conf" <<EOF
spool_directory = $work/spool
log_file_path = $work/log/%slog
primary_hostname = exim-check.invalid
EOF

# One line per vector: name TAB date TAB expansion-string TAB expected (or "-" TAB reason).
python3 - "$here/sign.json" >"$work/cases" <<'EOF'
import json, sys
esc = lambda b: "".join("\\x%02x" % c for c in b)
for v in json.load(open(sys.argv[1], encoding="utf-8"))["vectors"]:
    key = bytes.fromhex(v["key_hex"])
    why = ("skipped by the signer" if v["skip"] else "lifetime is not 7" if v["lifetime"] != 7
           else "sub-address form" if v["sub_address"] else "key longer than 64 bytes" if len(key) > 64
           else "key contains a NUL byte" if 0 in key else "")
    if why:
        print("\t".join([v["name"], "-", "-", why]))
    else:
        expr = "${prvs{%s}{%s}{%d}}" % (esc(v["address"].encode("utf-8")), esc(key), v["key_id"])
        print("\t".join([v["name"], v["date"], expr, v["expected"]]))
EOF

match=0 mismatch=0 skipped=0
while IFS=$'\t' read -r name date expr expected; do
    if [ "$date" = "-" ]; then
        echo "not compared  $name ($expected)"; skipped=$((skipped + 1)); continue
    fi
    # The expansion goes in on standard input (Exim limits a command-line argument to 256
    # characters here); Exim answers with a "> " prompt before the result.
    got=$(printf '%s\n' "$expr" | env TZ=UTC FAKETIME="@$date 12:00:00" \
          LD_PRELOAD="${extra_preload:+$extra_preload }$libfaketime" \
          "$exim" -C "$work/exim.conf" -be 2>&1 | sed -n '1s/^> //p') || true
    if [ "$got" = "$expected" ]; then
        echo "match         $name $got"; match=$((match + 1))
    else
        echo "MISMATCH      $name: exim gave '$got', expected '$expected'"; mismatch=$((mismatch + 1))
    fi
done <"$work/cases"

echo "exim-check: $match matched, $mismatch mismatched, $skipped not compared"
[ "$mismatch" -eq 0 ] && [ "$match" -gt 0 ]
