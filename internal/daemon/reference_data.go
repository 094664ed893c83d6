package daemon

// Code below is the configuration reference: edit it here, then run
// "go generate ./internal/daemon" (or make docs) to write docs/batv.toml.

const referenceHeader = `# batv.toml: the configuration file of the batv milter daemon
#
# This file is the reference of every option, and a working configuration for
# the Postfix setup of docs/postfix.md: installed as /etc/batv/batv.toml with
# your own domains in [sign] domains, it is what the shipped systemd unit
# runs. Each option is explained above its line, with its default and an
# example. Options left at their default are written out with the default
# value; options whose default cannot be written in TOML are commented out.
#
# The file is TOML (https://toml.io). batv reads it at start and again on
# SIGHUP ("systemctl reload batv"). It is strict: an unknown key (keys are
# lower case), a value of the wrong type and every invalid setting are
# errors, all reported at once, each with its file and line. "batv check-config -c FILE" checks a file, and
# the keyring it names, without starting anything.
#
# Durations are Go duration strings: "90s", "15m", "2h30m", "120h". There is
# no "d" unit: write days as hours ("168h" is 7 days). Times are TOML offset
# date-times such as 2025-06-01T00:00:00Z.
#
# Without any configuration file, "batv milter --domain example.com" is a
# trial run on an embedded default: a milter that only verifies (role
# inbound) on inet:127.0.0.1:8891, the lookup service on
# inet:127.0.0.1:8892, create_keyring = true, and the trial
# keyring $XDG_STATE_HOME/batv/keyring.json (by default
# ~/.local/state/batv/keyring.json, for root too), which "batv sign",
# "verify", "explain" and "check-config" also use without --config. A file
# differs from that default in three ways: the keyring is the one below,
# create_keyring is false unless the file sets it, and there is no lookup
# service unless the file has a [socketmap] table. Neither has a policy
# service unless the file has a [policy_service] table.
#
# Most options take effect on reload. These need a restart: keyring,
# keyring_poll, [log] format, [metrics], [limits], [[listener]], [socketmap]
# and [policy_service]. A reload that changes them keeps the running values
# and logs a warning naming what changed.`

var reference = []refSection{
	{
		title: `Top-level options: the keyring`,
		table: ``,
		doc: `The keyring holds the keys that sign and verify tags. It is managed with
"batv keys" (see docs/keyring.md); the daemon only reads it, and reloads it
by itself when the file changes.`,
		options: []refOption{
			{
				key: `keyring`,
				doc: `The keyring file. It must be a regular file of mode 0600 (or 0400) readable
by the user batv runs as. The --keyring option of "batv milter",
"check-config", "explain", "sign" and "verify", and the environment variable
BATV_KEYRING, override it.`,
				default_: `"/var/lib/batv/keyring.json"`,
				example:  `keyring = "/etc/batv/keyring.json"`,
				value:    `"/var/lib/batv/keyring.json"`,
			},
			{
				key: `create_keyring`,
				doc: `Create the keyring at start if the file does not exist: one 32-byte key
from the system's random source that signs at once, max_lifetime_days the
larger of [sign] lifetime and [verify] max_lifetime, 24 hours of grace, no
per-domain keys. The directory is created (mode 0700) if missing. An
existing file is never touched. "batv check-config" does not create the
keyring and fails while it is missing; so does the shipped systemd unit,
which runs it before every start: with that unit, create the keyring with
"batv keys init" before the first start instead.`,
				default_: `false in a file (true for the embedded default without a file)`,
				example:  `create_keyring = true`,
				value:    `false`,
			},
			{
				key: `keyring_poll`,
				doc: `How often the keyring file is looked at (inode, size, modification time and
mode); the daemon reloads it when any of them changed. A file that cannot be
used (damaged, truncated, deleted, readable by others) is reported once and
the keys in force stay. At least "100ms". Needs a restart to change.`,
				default_: `"5s"`,
				example:  `keyring_poll = "30s"`,
				value:    `"5s"`,
			},
		},
	},
	{
		title: `[log]: the log`,
		table: `[log]`,
		doc: `batv logs to standard error (the journal, under systemd), one line per
decision: each signed message, and each recipient in a verified domain with
its outcome, action, reason and key id. docs/operations.md lists the fields.`,
		options: []refOption{
			{
				key: `format`,
				doc: `The line format: "text" (key=value pairs, as logfmt) or "json" (one JSON
object per line). Needs a restart to change.`,
				default_: `"text"`,
				example:  `format = "json"`,
				value:    `"text"`,
			},
			{
				key: `level`,
				doc: `The least severe level logged: "debug", "info", "warn" or "error". "debug"
adds a line per connection, per message left unsigned and per address the
Postfix tables answer for. Changed by a reload.`,
				default_: `"info"`,
				example:  `level = "debug"`,
				value:    `"info"`,
			},
		},
	},
	{
		title: `[metrics]: the Prometheus and health endpoint`,
		table: `[metrics]`,
		doc: `An HTTP server with two paths: /metrics, the Prometheus metrics (every name
is listed in docs/operations.md, and docs/grafana-dashboard.json shows
them), and /healthz, which answers 200 "ok" while a key signs and 503 when
none does. It has no authentication. It serves at most 16 connections at
once (more wait in the kernel's queue, holding nothing of batv's), waits at
most 10 seconds for a request and for a reply to be written, and closes a
connection idle for 2 minutes between requests.`,
		options: []refOption{
			{
				key: `listen`,
				doc: `The HOST:PORT to listen on; empty switches the endpoint off. Keep it on
loopback or a management network: ":8893" listens on every interface, and
batv warns at start (and "check-config" prints a warning) for every
interface, a non-loopback address or a host name. Needs a restart to change.`,
				default_: `"" (off)`,
				example:  `listen = "127.0.0.1:8893"`,
				value:    `""`,
			},
		},
	},
	{
		title: `[limits]: resources and timeouts`,
		table: `[limits]`,
		doc:   `All three need a restart to change.`,
		options: []refOption{
			{
				key: `max_connections`,
				doc: `The most MTA connections open at once on each listener: each milter
listener, the lookup service and the policy service. Postfix opens one
milter connection per smtpd and cleanup process that uses the milter, and
one policy connection per smtpd process, so keep this above the number of
those processes (default_process_limit is 100). A connection over the
limit is closed at once, and the MTA applies its default action to that
mail (milter_default_action, smtpd_policy_service_default_action), or
fails the lookup. batv refuses to start unless it may open a file
descriptor for every connection of every listener, 16 for the metrics
endpoint and 64 of its own (RLIMIT_NOFILE; the shipped unit has a
LimitNOFILE of 16384), so that a flood on one listener or the metrics
endpoint never leaves another without a descriptor.`,
				default_: `1024`,
				example:  `max_connections = 4096`,
				value:    `1024`,
			},
			{
				key: `idle_timeout`,
				doc: `How long an MTA connection, to a milter listener, the lookup service or the
policy service, may send nothing before batv closes it. At least "1m".
Postfix keeps a milter connection open for a whole SMTP session, and a
policy connection between the RCPT and DATA commands of a message, idle
while the client is slow, so keep this above Postfix's smtpd_timeout
(300s).`,
				default_: `"15m"`,
				example:  `idle_timeout = "30m"`,
				value:    `"15m"`,
			},
			{
				key: `shutdown_timeout`,
				doc: `How long messages in flight may take to finish when batv stops (SIGTERM,
"systemctl stop"). Connections between messages are closed at once; those
still in a message when the time is up are closed, and the MTA applies its
milter default action to the message. A second SIGTERM stops at once. At
least "1s". Keep it below systemd's TimeoutStopSec (90s by default).`,
				default_: `"30s"`,
				example:  `shutdown_timeout = "60s"`,
				value:    `"30s"`,
			},
		},
	},
	{
		title: `[[listener]]: the milter sockets`,
		table: `[[listener]]`,
		doc: `Each [[listener]] table is one socket the MTA connects to with the milter
protocol. The listeners in a file replace the default one; a file without
any [[listener]] gets the default: name "milter", address
inet:127.0.0.1:8891, roles ["inbound"] (a milter that signs on TCP signs for
every local user: see below), unless it has a [policy_service] table: an MX
can then run without a milter.

Socket placement for Postfix: put unix sockets in a directory under
Postfix's queue directory, /var/spool/postfix/batv (owner batv, group
postfix, mode 0750; the shipped tmpfiles.d snippet creates it). A chrooted
Postfix (Debian chroots smtpd and cleanup by default) sees only the queue
directory, and Postfix works in it whether chrooted or not, so main.cf names
the socket relative to it: smtpd_milters = unix:batv/milter.sock. The
directory must exist before batv starts ("check-config" reports it missing);
batv creates the socket in it, removes a socket file only when a connection
to it is refused (a dead process left it behind), and refuses to start if
anything else answers: a live listener, one with a full backlog, a datagram
socket, or an answer it cannot read (no permission).

An inet listener has no access control: anyone who can connect can have
addresses signed: it claims SMTP AUTH ({auth_authen}) or an internal client
address, and the milter believes it. Give the outbound role to unix
sockets (socket_group postfix), and keep inet listeners on loopback: batv warns at start (and
"check-config" prints a warning) for a listener on every interface
("inet:0.0.0.0:8891", "inet::8891", "inet:[::]:8891"), on a non-loopback
address or on a host name, and for an outbound listener on TCP. Two listeners (or the socketmap, or [metrics]
listen) on the same socket are an error however they are written:
"inet:localhost:8891" is "inet:127.0.0.1:8891", a port on every interface
takes that port on every address, and "unix:/run//batv/./m.sock" is
"unix:/run/batv/m.sock".

Two listeners split the roles, for instance a submission-only milter for
the submission service and a verifying milter for the MX:

    [[listener]]
    name = "submission"
    address = "unix:/var/spool/postfix/batv/submission.sock"
    roles = ["outbound"]
    socket_group = "postfix"

    [[listener]]
    name = "mx"
    address = "unix:/var/spool/postfix/batv/mx.sock"
    roles = ["inbound"]
    socket_group = "postfix"`,
		options: []refOption{
			{
				key: `name`,
				doc: `The listener's name, unique, in the log (listener=NAME) and in the metrics
(the listener label). Required.`,
				default_: `"milter" for the default listener; required in a file`,
				example:  `name = "mx"`,
				value:    `"milter"`,
			},
			{
				key: `address`,
				doc: `Where to listen: "unix:/absolute/path" or "inet:HOST:PORT" (as in Postfix's
milter settings; "inet6:" is accepted too). Required.`,
				default_: `"inet:127.0.0.1:8891" for the default listener; required in a file`,
				example:  `address = "inet:127.0.0.1:8891"`,
				value:    `"unix:/var/spool/postfix/batv/milter.sock"`,
			},
			{
				key: `roles`,
				doc: `What the milter does on this listener: "outbound" signs the envelope sender
of mail that is ours to sign (see [sign]); "inbound" checks the tagged
recipients of bounces and removes their tags (see [verify]). One or both;
a listener with only one asks the MTA for fewer milter steps. Required.`,
				default_: `["inbound"] for the default listener; required in a file`,
				example:  `roles = ["inbound"]`,
				value:    `["outbound", "inbound"]`,
			},
			{
				key: `socket_group`,
				doc: `The group of a unix socket, by name or number, so that the MTA can connect:
"postfix" for Postfix, which connects as user postfix. batv must be a member
of the group (the shipped unit has SupplementaryGroups=postfix). Unix
sockets only.`,
				default_: `"" (the group of the batv process)`,
				example:  `socket_group = "postfix"`,
				value:    `"postfix"`,
			},
			{
				key: `socket_mode`,
				doc: `The permission bits of a unix socket, in octal. batv sets them itself after
creating the socket, so its umask does not matter. Modes that give other
users any access are refused: only the owner and the group may talk to the
milter. Unix sockets only.`,
				default_: `"0660"`,
				example:  `socket_mode = "0600"`,
				value:    `"0660"`,
			},
		},
	},
	{
		title: `[socketmap]: the lookup service for Postfix`,
		table: `[socketmap]`,
		doc: `Postfix checks recipients before the milter sees them and would refuse a
tagged address as "User unknown"; and bounces Postfix makes itself never
pass through milters. batv therefore serves two tables over Postfix's
socketmap protocol: "strip" maps a tagged address in a verified domain to
its untagged address without checking the tag (for recipient validation),
"untag" maps only a validly tagged address (for the cleanup service of
Postfix's bounce daemons). docs/postfix.md has the main.cf and master.cf
lines:

    socketmap:unix:batv/socketmap.sock:strip
    socketmap:unix:batv/socketmap.sock:untag

Without a [socketmap] table in the file there is no lookup service. Sendmail
does not need it (docs/sendmail.md).`,
		options: append([]refOption{
			{
				key: `address`,
				doc: `Where to listen: "unix:/absolute/path" or "inet:HOST:PORT". Place a unix
socket as for [[listener]].`,
				default_: `"inet:127.0.0.1:8892" for the embedded default; none in a file`,
				example:  `address = "inet:127.0.0.1:8892"`,
				value:    `"unix:/var/spool/postfix/batv/socketmap.sock"`,
			},
		}, unixSocketOptions...),
	},
	{
		title: `[policy_service]: the policy service for an MX without a milter`,
		table: `[policy_service]`,
		doc: `Postfix's SMTP access policy delegation (check_policy_service): batv
decides each recipient of inbound mail at RCPT, and refuses a bounce to
untagged addresses at DATA, with the replies of the inbound milter, for
an MX that runs no milter at all. Postfix keeps one policy connection per
smtpd process across SMTP sessions, where a milter costs a connection per
session. What it cannot do, and the main.cf and master.cf lines: the
section "An MX without a milter" of docs/postfix.md:

    smtpd_recipient_restrictions = ..., check_policy_service unix:batv/policy.sock
    smtpd_data_restrictions = check_policy_service unix:batv/policy.sock

Without a [policy_service] table in the file there is no policy service;
the milter setup of docs/postfix.md does not need it. Its listener is
named policy_service in the log and the metrics.`,
		commented: true,
		options: append([]refOption{
			{
				key: `address`,
				doc: `Where to listen: "unix:/absolute/path" or "inet:HOST:PORT". Place a unix
socket as for [[listener]].`,
				default_: `none`,
				example:  `address = "inet:127.0.0.1:8893"`,
				value:    `"unix:/var/spool/postfix/batv/policy.sock"`,
			},
		}, unixSocketOptions...),
	},
	{
		title: `[sign]: which outbound mail is signed, and how`,
		table: `[sign]`,
		doc: `A message is ours to sign when its client authenticated with SMTP AUTH
(authenticated), arrived on a submission service (submission_daemons), was
submitted on the MTA host itself (local) or comes from an internal network
(internal_networks), checked in that order. It is then signed if its
envelope sender is in one of the domains, neither the sender nor any
recipient is exempt, and the sender can be tagged (not the null sender, not
already tagged, not an SRS address, not a quoted local part, not too long
once tagged).`,
		options: []refOption{
			{
				key: `domains`,
				doc: `The sender domains to sign, matched exactly and without regard to case;
subdomains are not included. Each must be a host name (letters, digits and
hyphens; labels of 1 to 63 characters), without a trailing dot, and an
internationalised name in its ASCII form ("xn--bcher-kva.example", not
"bücher.example"); an address matches it in either form, since Postfix
accepts mail for whichever form its own domain lists name (an SMTPUTF8
client may write either). The --domain option of "batv milter" adds to
this list. Sign only domains whose MX hosts run batv (or another BATV
verifier with the same keys) with the Postfix lookup tables: elsewhere
bounces and replies to tagged addresses are refused as unknown users.`,
				default_: `[] (nothing is signed)`,
				example:  `domains = ["example.com", "example.net"]`,
				value:    `["example.com"]`,
			},
			{
				key: `lifetime`,
				doc: `The number of days a tag stays valid after the day it is made: 1 to 30. A
bounce can arrive days after the message left, when the receiving server
gives up retrying (Postfix's maximal_queue_lifetime is 5 days), so keep it
longer than that. The keyring's max_lifetime_days must be at least this, or
batv refuses the configuration.`,
				default_: `7`,
				example:  `lifetime = 10`,
				value:    `7`,
			},
			{
				key:      `sub_address`,
				doc:      "Sign in the sub-address form, user+prvs=KDDDSSSSSS@example.com, with this one\ncharacter as the delimiter, one of + - _ . ! # $ % & ' * ? ^ ` { | } ~. For\nMTAs that cannot be taught tagged addresses but deliver user+anything to\nuser, such as Sendmail (docs/sendmail.md). [verify] delimiter must be the\nsame character, or the bounces to these addresses would not verify (an\nerror). Empty means the standard form: prvs=KDDDSSSSSS=user@example.com.",
				default_: `"" (the standard form)`,
				example:  `sub_address = "+"`,
				value:    `""`,
			},
			{
				key: `internal_networks`,
				doc: `Client networks (CIDR) or single addresses whose mail is ours to sign
without SMTP AUTH: relays and servers of your own that submit mail. List
only networks no stranger's mail comes from. The list replaces the default.
A network of every address (0.0.0.0/0, ::/0) is an error.`,
				default_: `["127.0.0.0/8", "::1/128"]`,
				example:  `internal_networks = ["127.0.0.0/8", "::1/128", "192.0.2.0/24", "2001:db8::/32"]`,
				value:    `["127.0.0.0/8", "::1/128"]`,
			},
			{
				key: `submission_daemons`,
				doc: `MTA services whose mail is ours to sign, by the {daemon_name} milter macro
the MTA sends at connect. In Postfix it is milter_macro_daemon_name, set per
service in master.cf: "-o milter_macro_daemon_name=ORIGINATING" on the
submission service. In Sendmail it is the Name= of DAEMON_OPTIONS, "MSA"
for the submission port. Authenticated mail is signed on any service
anyway; this is for services that authenticate some other way.`,
				default_: `[] (none)`,
				example:  `submission_daemons = ["ORIGINATING"]`,
				value:    `[]`,
			},
			{
				key: `authenticated`,
				doc: `Sign mail from clients that authenticated with SMTP AUTH (the MTA sends
{auth_authen}), on any port.`,
				default_: `true`,
				example:  `authenticated = false`,
				value:    `true`,
			},
			{
				key: `local`,
				doc: `Sign mail submitted on the MTA host itself, which has no client address:
sendmail(1) and Postfix's pickup (Postfix's non_smtpd_milters), Sendmail's
local submission.`,
				default_: `true`,
				example:  `local = false`,
				value:    `true`,
			},
			{
				key: `exempt_senders`,
				doc: `Senders never signed: full addresses ("noreply@example.com"), domains
("example.com" or "@example.com"), or local parts in every domain ("noreply":
an entry with neither "@" nor "."). Case does not matter.`,
				default_: `[] (none)`,
				example:  `exempt_senders = ["noreply@example.com", "@lists.example.com"]`,
				value:    `[]`,
			},
			{
				key: `exempt_recipients`,
				doc: `Recipients (same forms as exempt_senders) whose mail is never signed:
mailing lists and other systems that recognise their members by envelope
sender, which changes with every tag. One exempt recipient leaves the whole
message unsigned.`,
				default_: `[] (none)`,
				example:  `exempt_recipients = ["lists.example.org", "majordomo@example.net"]`,
				value:    `[]`,
			},
			{
				key: `on_error`,
				doc: `What happens to a message batv fails to sign, for instance because no key
in the keyring signs: "continue" sends it unsigned (the failure is logged
and counted as result="error"); "tempfail" answers 451 4.3.0 so the client
retries later.`,
				default_: `"continue"`,
				example:  `on_error = "tempfail"`,
				value:    `"continue"`,
			},
		},
	},
	{
		title: `[verify]: which bounces are checked, and what is done with them`,
		table: `[verify]`,
		doc: `For each recipient in a verified domain the inbound milter verifies the tag
at RCPT. A bounce (null sender, MAIL FROM:<>) to a valid tag is accepted and
delivered to the untagged address; to a forged, expired, malformed or
unknown-key tag it is refused with 550 5.7.1; to an untagged address it gets
untagged_bounce. Mail with a sender (a reply, an auto-reply) to a tag is
delivered to the untagged address even when the tag has expired; a tag that
fails its check gets invalid_tag_reply. postmaster and abuse of every domain
are never refused.`,
		options: []refOption{
			{
				key: `domains`,
				doc: `The recipient domains whose bounces are checked, and for which the lookup
service answers, written as [sign] domains are; a recipient matches in the
domain's ASCII or Unicode form. Verify only domains all of whose mail is
signed: once the grace period is over, bounces to their untagged addresses
are refused.`,
				default_:  `the [sign] domains`,
				example:   `domains = ["example.com", "example.net"]`,
				value:     `["example.com"]`,
				commented: true,
			},
			{
				key: `max_lifetime`,
				doc: `The longest lifetime, in days, that any host of the site signs with: a tag
whose expiry day is more than this many days ahead is treated as expired.
Set it when hosts sign with different lifetimes. At least [sign] lifetime,
at most 30; the keyring's max_lifetime_days must be at least this.`,
				default_: `0, which means [sign] lifetime`,
				example:  `max_lifetime = 14`,
				value:    `0`,
			},
			{
				key: `strict`,
				doc: `By default a tag whose MAC matches only the lowercased form of the address
is accepted too, for signers that lowercase addresses. true accepts only a
MAC over the address exactly as received.`,
				default_: `false`,
				example:  `strict = true`,
				value:    `false`,
			},
			{
				key: `clock_skew`,
				doc: `Also accept a tag that would be within its validity window this much before
or after now, for sites whose signing and verifying hosts may disagree about
the date near midnight. "0s" to "12h".`,
				default_: `"0s" (off)`,
				example:  `clock_skew = "15m"`,
				value:    `"0s"`,
			},
			{
				key: `delimiter`,
				doc: `The sub-address delimiter of tags in the sub-address form
(user+prvs=KDDDSSSSSS@example.com), recognised when verifying and by the
lookup service. One character from the list of [sign] sub_address; the
same as [sign] sub_address when that is set.`,
				default_: `"+"`,
				example:  `delimiter = "-"`,
				value:    `"+"`,
			},
			{
				key: `untagged_bounce`,
				doc: `What happens to a bounce to an untagged address in a verified domain, once
the grace period is over: "reject" (550 5.7.1), "tempfail" (451 4.7.1, for a
trial: the sender retries and nothing is lost while you watch the log),
"quarantine" (accept into Postfix's hold queue, marked with the status
header), "tag" (accept and add the status header) or "off" (accept
unmarked).`,
				default_: `"reject"`,
				example:  `untagged_bounce = "tempfail"`,
				value:    `"reject"`,
			},
			{
				key: `refuse_untagged_at`,
				doc: `When an untagged bounce is refused (untagged_bounce "reject" or
"tempfail"): "data" accepts the recipient at RCPT and refuses the
transaction at the DATA command, before the message is sent; "rcpt" refuses
the recipient at RCPT. "data" keeps sender address verification working:
a site that verifies senders with a callout (MAIL FROM:<>, RCPT TO your
user, QUIT, never DATA) gets 250 for your untagged users, while a real
bounce to them gets its 550 at DATA. "rcpt" refuses those callouts, and the
verifying site then refuses your users' mail whenever batv did not sign it
(mail to exempt_recipients, mail sent before signing began, sites that
verify the From: address). A bounce transaction never mixes recipients:
after a recipient that will be delivered, an untagged one is refused at
RCPT (a callout has one recipient); after an untagged one, a recipient that
would be delivered gets 452 4.5.3 and comes again in a transaction of its
own. Bounces to tags that do not verify are refused at RCPT either way.`,
				default_: `"data"`,
				example:  `refuse_untagged_at = "rcpt"`,
				value:    `"data"`,
			},
			{
				key: `invalid_tag_reply`,
				doc: `What happens to mail with a sender (a reply, an auto-reply) to a tagged
recipient whose tag does not verify (a bad signature or an unknown key; a
malformed tag has no untagged address and stays as addressed): "reject"
refuses the recipient with 550 5.7.1; "deliver-mark" delivers to the
untagged address and adds the status header; "deliver" delivers to the
untagged address; "pass" leaves the recipient as it is. Bounces to such tags
are refused whatever this says, unless the recipient or client is exempt.
"deliver" and "deliver-mark" let a made-up tag reach a recipient that
Postfix's recipient-keyed restrictions (check_recipient_access) refuse,
unless those see the untagged address too (docs/postfix.md).`,
				default_: `"reject"`,
				example:  `invalid_tag_reply = "deliver-mark"`,
				value:    `"reject"`,
			},
			{
				key: `exempt_recipients`,
				doc: `Recipients whose bounces are never refused: full addresses, domains or
local parts, as for [sign] exempt_senders ("hostmaster" exempts
hostmaster@ of every verified domain). A bounce to an exempt recipient with
a tag that does not verify is delivered to the untagged address and marked.
postmaster and abuse are always exempt, in addition to this list. A
verified domain itself is an error here: leave it out of [verify] domains
instead.`,
				default_: `[] (postmaster and abuse only)`,
				example:  `exempt_recipients = ["hostmaster", "dmarc-reports@example.com"]`,
				value:    `[]`,
			},
			{
				key: `exempt_clients`,
				doc: `Client networks (CIDR) or addresses whose bounces are never refused: your
own relays and secondary MX hosts that do not verify, and partners that
send legitimate bounces to untagged addresses. A network of every address
(0.0.0.0/0, ::/0) is an error: untagged_bounce = "off" is the way to accept
untagged bounces.`,
				default_: `[] (none)`,
				example:  `exempt_clients = ["192.0.2.25", "2001:db8:25::/64"]`,
				value:    `[]`,
			},
			{
				key: `grace_until`,
				doc: `The end of the grace period after BATV is first deployed, during which
bounces to untagged addresses are accepted, since mail sent before signing
began can still bounce. Unset, it ends at the keyring's creation time +
max_lifetime days + queue_lifetime (12 days after "batv keys init" with the
defaults). A time in the past switches the grace period off. The daemon logs
it at start (grace_until=) and the metric
batv_grace_period_remaining_seconds counts it down.`,
				default_:  `unset (keyring creation + max_lifetime + queue_lifetime)`,
				example:   `grace_until = 2025-06-01T00:00:00Z`,
				value:     `2025-06-01T00:00:00Z`,
				commented: true,
			},
			{
				key: `queue_lifetime`,
				doc: `The MTA's longest queue lifetime (Postfix's maximal_queue_lifetime), used
only for the default end of the grace period.`,
				default_: `"120h" (5 days, Postfix's default)`,
				example:  `queue_lifetime = "168h"`,
				value:    `"120h"`,
			},
			{
				key: `status_header`,
				doc: `The header batv adds to mark a message, with the outcome and the recipient
("untagged; rcpt=<alice@example.com>", "bad-signature; rcpt=<...>"), and
removes from incoming messages.`,
				default_: `"X-BATV-Status"`,
				example:  `status_header = "X-Example-BATV"`,
				value:    `"X-BATV-Status"`,
			},
			{
				key: `remove_forged_headers`,
				doc: `Remove the status header from incoming messages, so that a sender cannot
forge it. The MTA then sends every header of every message on inbound
listeners to batv (Postfix without waiting for a reply). Set it to false
only if the MTA removes the header instead (Postfix header_checks, see
docs/postfix.md).`,
				default_: `true`,
				example:  `remove_forged_headers = false`,
				value:    `true`,
			},
		},
	},
}

// unixSocketOptions are the socket options of [socketmap] and
// [policy_service].
var unixSocketOptions = []refOption{
	{
		key:      `socket_group`,
		doc:      `The group of the unix socket, as for [[listener]].`,
		default_: `"" (the group of the batv process)`,
		example:  `socket_group = "postfix"`,
		value:    `"postfix"`,
	},
	{
		key:      `socket_mode`,
		doc:      `The permission bits of the unix socket, as for [[listener]].`,
		default_: `"0660"`,
		example:  `socket_mode = "0600"`,
		value:    `"0660"`,
	},
}
