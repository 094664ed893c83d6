#!/usr/bin/env bash
# Installs the Debian package "make deb" built and checks it as an
# administrator finds it: the user and its groups, the owner and mode of
# every installed path, the shipped configuration (refused as it is, valid
# once a domain is set), the unit (systemd-analyze verify), the man pages,
# the completions, the tmpfiles entry, the daemon run as the unit runs it
# (user batv, the unit's system call filter, the installed paths), the
# Postfix end-to-end tests against the installed binary, a second install
# over the first, and a purge, which must keep the keyring.
#
# Usage, as root, from the source tree, on a Debian 12 machine with Go and
# Postfix (.ci/run installs what it needs):
#   dist/check-deb.sh bin/batv_*.deb
# It refuses to run where batv is or was installed, and leaves the machine
# as it found it: at the end (after a failure too) the package, the keyring
# the purge kept and the user batv are removed. Exit status 1 if a check
# failed.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -eq 1 ] || { echo "usage: $0 PACKAGE.deb" >&2; exit 2; }
deb=$(realpath "$1")
[ "$(id -u)" -eq 0 ] || { echo "$0: run it as root" >&2; exit 2; }
if dpkg-query -W -f '${Status}' batv 2>/dev/null | grep -q installed || [ -e /var/lib/batv ] || getent passwd batv >/dev/null; then
	echo "$0: batv is installed, or was (/var/lib/batv, the user batv): this script checks a fresh install" >&2
	exit 2
fi

failed=0
ok() { echo "ok   $*"; }
fail() {
	echo "FAIL $*"
	failed=1
}
# want DESCRIPTION EXPECTED ACTUAL
want() { if [ "$2" = "$3" ]; then ok "$1: $3"; else fail "$1: $3, want $2"; fi; }
# mode PATH OWNER:GROUP MODE
mode() { want "$1" "$2 $3" "$(stat -L -c '%U:%G %a' "$1" 2>&1)"; }

work=$(mktemp -d)
daemon=
# At the end, even after a failure, leave the machine as it was: no
# package, no keyring, no user batv.
cleanup() {
	if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
		kill -KILL "$daemon"
	fi
	if dpkg-query -W -f '${Status}' batv 2>/dev/null | grep -q installed; then
		apt-get purge -y -qq batv >/dev/null 2>&1 || true
	fi
	rm -rf /var/lib/batv "$work"
	if getent passwd batv >/dev/null; then
		deluser --quiet --system batv >/dev/null 2>&1 || true
		delgroup --quiet --system batv >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive

echo "== install $(basename "$deb") ($(stat -c %s "$deb") bytes)"
t0=$(date +%s%N)
apt-get install -y -qq --no-install-recommends "$deb" >"$work/install.log" 2>&1 || { cat "$work/install.log"; exit 1; }
t1=$(date +%s%N)
echo "installed in $(((t1 - t0) / 1000000)) ms"

echo "== the user and its groups"
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd batv) || fail "no user batv"
if [ "${uid:-0}" -gt 0 ] && [ "${uid:-1000}" -lt 1000 ]; then ok "batv is a system user (uid $uid)"; else fail "batv: uid ${uid:-none}"; fi
want "home of batv" /var/lib/batv "${home:-}"
want "shell of batv" /usr/sbin/nologin "${shell:-}"
want "groups of batv" "batv postfix" "$(id -nG batv | tr ' ' '\n' | sort | paste -sd ' ')"

echo "== owner and mode of every installed path"
while read -r path; do
	[ "$path" = /. ] && continue
	if [ "$path" = /usr/sbin/batv ] || [ -d "$path" ]; then
		mode "$path" root:root 755
	else
		mode "$path" root:root 644
	fi
done < <(dpkg -L batv)
mode /var/lib/batv batv:batv 700
mode /var/spool/postfix/batv batv:postfix 750
want "conffiles" /etc/batv/batv.toml "$(dpkg-query -W -f '${Conffiles}\n' batv | awk 'NF {print $1}')"
for p in /usr/share/man/man8/batv.8.gz /usr/share/man/man5/batv.toml.5.gz \
	/usr/share/bash-completion/completions/batv /usr/share/zsh/vendor-completions/_batv \
	/usr/share/fish/vendor_completions.d/batv.fish /lib/systemd/system/batv.service \
	/usr/lib/tmpfiles.d/batv.conf /usr/share/doc/batv/examples/grafana-dashboard.json \
	/usr/share/doc/batv/examples/prometheus-alerts.yml /usr/share/doc/batv/README.Debian; do
	if [ -f "$p" ]; then ok "$p installed"; else fail "$p is missing"; fi
done

echo "== the binary"
want "libc" "not a dynamic executable" "$(ldd /usr/sbin/batv 2>&1 | sed 's/^[[:space:]]*//')"
want "built with" "CGO_ENABLED=0" "$(go version -m /usr/sbin/batv | awk '$2 ~ /^CGO_ENABLED=/ {print $2}')"
version=$(batv --version)
if [ "$version" != "batv version dev" ] && [ "$version" != "batv version " ]; then ok "$version"; else fail "$version"; fi

echo "== the shipped configuration"
set +e
out=$(batv check-config -c /etc/batv/batv.toml 2>&1)
status=$?
set -e
want "check-config of the configuration as shipped (no domain)" 2 "$status"
case $out in *"no domains to sign or verify"*) ok "it says: $out" ;; *) fail "it says: $out" ;; esac
# What the administrator does (README.Debian): the domain, then the keyring.
sed -i 's/^domains = \[\]  # set your domains.*$/domains = ["example.com"]/' /etc/batv/batv.toml
runuser -u batv -- batv keys init --keyring /var/lib/batv/keyring.json >/dev/null
mode /var/lib/batv/keyring.json batv:batv 600
if out=$(batv check-config -c /etc/batv/batv.toml 2>&1); then ok "$out"; else fail "check-config with the domain set: $out"; fi
if out=$(runuser -u batv -- batv check-config -c /etc/batv/batv.toml 2>&1); then ok "as batv: $out"; else fail "check-config as batv: $out"; fi

echo "== the unit"
if out=$(systemd-analyze verify /lib/systemd/system/batv.service 2>&1) && [ -z "$out" ]; then
	ok "systemd-analyze verify: no warning"
else
	fail "systemd-analyze verify: $out"
fi
if systemctl is-enabled batv.service >/dev/null 2>&1; then fail "the unit is enabled at install"; else ok "the unit is not enabled ($(systemctl is-enabled batv.service 2>&1 || true))"; fi

echo "== the man pages"
page=$(MANWIDTH=200 man 8 batv 2>&1 | col -b)
case $page in *"batv sign [--config FILE] [--keyring PATH | --secret-file FILE --key-id K]"*) ok "man 8 batv: the synopsis" ;; *) fail "man 8 batv: no synopsis" ;; esac
case $page in *"--config, -c FILE"*) ok "man 8 batv: --config, -c FILE" ;; *) fail "man 8 batv: --config does not render" ;; esac
case $page in *'=""'*) fail 'man 8 batv: a flag renders as --flag=""' ;; *) ok 'man 8 batv: no --flag=""' ;; esac
page=$(MANWIDTH=200 man 5 batv.toml 2>&1 | col -b)
case $page in *"socket_group"*) ok "man 5 batv.toml: the options" ;; *) fail "man 5 batv.toml: $page" ;; esac

echo "== the bash completion"
# complete WORD... prints what bash offers for the last word.
complete_words() {
	bash -c 'source /usr/share/bash-completion/completions/batv
		COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _batv_complete; printf "%s\n" "${COMPREPLY[@]}"' bash "$@"
}
want "batv milter -c <TAB> (nothing: bash completes file names)" "" "$(complete_words batv milter -c '')"
want "batv milter --conf<TAB>" "--config" "$(complete_words batv milter --conf)"
want "batv keys ro<TAB>" "rotate" "$(complete_words batv keys ro)"

echo "== the tmpfiles entry"
rmdir /var/spool/postfix/batv
chmod 0755 /var/lib/batv
systemd-tmpfiles --create /usr/lib/tmpfiles.d/batv.conf
mode /var/spool/postfix/batv batv:postfix 750
mode /var/lib/batv batv:batv 700

echo "== the daemon as the unit runs it: user batv, the unit's system call filter"
go build -o "$work/unitfilter" ./internal/unitfilter
chmod 0755 "$work"
log=$work/daemon.log
# As the unit runs it: user and group batv, and batv's other groups
# (postfix). setpriv executes the command in its own process, so $! is the
# daemon's.
as_batv=(setpriv --reuid=batv --regid=batv --init-groups --)
# As ExecStartPre, then ExecStart.
if out=$("${as_batv[@]}" "$work/unitfilter" -unit /lib/systemd/system/batv.service -- \
	/usr/sbin/batv check-config --config /etc/batv/batv.toml 2>&1); then
	ok "ExecStartPre under the filter: $out"
else
	fail "ExecStartPre under the filter: $out"
fi
"${as_batv[@]}" "$work/unitfilter" -unit /lib/systemd/system/batv.service -- \
	/usr/sbin/batv milter --config /etc/batv/batv.toml >"$log" 2>&1 &
daemon=$!
for _ in $(seq 100); do
	grep -q 'batv started' "$log" && break
	kill -0 "$daemon" 2>/dev/null || break
	sleep 0.1
done
if grep -q 'batv started' "$log"; then ok "started"; else fail "did not start: $(cat "$log")"; fi
mode /var/spool/postfix/batv/milter.sock batv:postfix 660
mode /var/spool/postfix/batv/socketmap.sock batv:postfix 660
: >"$work/main.cf" # postmap wants a main.cf; the defaults will do
want "postmap -q prvs=0123456789=alice@example.com socketmap:unix:batv/socketmap.sock:strip" alice@example.com \
	"$(postmap -c "$work" -q prvs=0123456789=alice@example.com socketmap:unix:/var/spool/postfix/batv/socketmap.sock:strip 2>&1)"
kill -HUP "$daemon"
for _ in $(seq 50); do grep -q 'msg=reloaded' "$log" && break; sleep 0.1; done
if grep -q 'msg=reloaded' "$log"; then ok "reloaded on SIGHUP"; else fail "no reload: $(cat "$log")"; fi
kill -TERM "$daemon"
if wait "$daemon"; then ok "stopped on SIGTERM, exit status 0"; else fail "exit status $? after SIGTERM: $(cat "$log")"; fi
if grep -E 'level=(WARN|ERROR)|not permitted' "$log"; then fail "warnings or refused calls in the log"; else ok "no warning in the log"; fi
if [ -e /var/spool/postfix/batv/milter.sock ]; then fail "the milter socket is left behind"; else ok "sockets removed"; fi

echo "== the Postfix end-to-end tests against /usr/sbin/batv"
BATV_E2E=1 BATV_BIN=/usr/sbin/batv go test -count=1 -run '^TestPostfix' ./internal/e2e/ || fail "the end-to-end tests"

echo "== a second install over the first"
cp /etc/batv/batv.toml "$work/edited.toml"
t0=$(date +%s%N)
dpkg -i "$deb" >"$work/reinstall.log" 2>&1 || { cat "$work/reinstall.log"; fail "dpkg -i again"; }
t1=$(date +%s%N)
echo "reinstalled in $(((t1 - t0) / 1000000)) ms"
if cmp -s /etc/batv/batv.toml "$work/edited.toml"; then ok "the edited configuration is kept"; else fail "the configuration changed"; fi
want "groups of batv" "batv postfix" "$(id -nG batv | tr ' ' '\n' | sort | paste -sd ' ')"
mode /var/lib/batv batv:batv 700
mode /var/spool/postfix/batv batv:postfix 750
mode /var/lib/batv/keyring.json batv:batv 600

echo "== purge"
apt-get purge -y -qq batv >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "apt-get purge"; }
grep 'kept /var/lib/batv' "$work/purge.log" || fail "the purge does not say it kept the keyring"
for p in /usr/sbin/batv /etc/batv /var/spool/postfix/batv /lib/systemd/system/batv.service; do
	if [ -e "$p" ]; then fail "$p is left after the purge"; else ok "$p removed"; fi
done
if [ -f /var/lib/batv/keyring.json ]; then ok "the keyring is kept"; else fail "the purge removed the keyring"; fi
if getent passwd batv >/dev/null; then ok "the user batv is kept"; else fail "the purge removed the user batv"; fi


if [ "$failed" -ne 0 ]; then
	echo "check-deb: FAILED"
	exit 1
fi
echo "check-deb: every check passed"
