// Package postfixtest runs a real, private Postfix instance on loopback for
// end-to-end tests, together with an in-process SMTP sink that receives
// everything the instance delivers.
//
// # What Start builds
//
// Start(t, opts) creates a directory under os.TempDir() (mode 0755, so that
// the postfix user can traverse it; Go's t.TempDir() parents are 0700 and
// cannot be used) holding:
//
//	etc/     main.cf, master.cf, relay_recipients (texthash),
//	         sasl/smtpd.conf and sasl/sasldb2 (Cyrus SASL, auxprop/sasldb)
//	queue/   queue_directory
//	data/    data_directory
//	log/     maillog (maillog_file, written by the postlog service)
//	sock/    a directory for unix sockets that Postfix must reach
//
// and starts it with "postfix -c DIR/etc start". The instance has two smtpd
// listeners on 127.0.0.1 with free ports:
//
//   - the MX port (no AUTH): relay_domains = opts.Domains (default
//     example.com) with recipient validation on (relay_recipient_maps lists
//     opts.Recipients; an unknown recipient gets "550 5.1.1 ... User unknown
//     in relay recipient table"), smtpd_relay_restrictions =
//     reject_unauth_destination, milter_macro_daemon_name = opts.MXDaemonName
//     (set in main.cf, so cleanup and non-smtpd mail see it as well);
//   - the submission port: Cyrus SASL (PLAIN, LOGIN) against a sasldb with
//     opts.Users, no TLS, plaintext AUTH allowed, relay and recipient
//     restrictions "permit_sasl_authenticated, reject", its own
//     syslog_name (postfix/submission) and milter_macro_daemon_name
//     (opts.SubmissionDaemonName, set with -o).
//
// Everything Postfix delivers, to the protected domains and to any other
// domain, goes by SMTP to the Sink ([127.0.0.1]:port via default_transport,
// relay_transport and relayhost). DNS is never used: numeric next hop in
// brackets, smtp_dns_support_level = disabled, smtp_host_lookup = native,
// smtpd_peername_lookup = no, explicit myhostname/mydomain and a SASL realm
// (smtpd_sasl_local_domain) so that Cyrus does not look up the host name.
//
// opts.Main is applied last to main.cf (so a test can set smtpd_milters,
// non_smtpd_milters, milter_default_action, recipient_canonical_maps, ...),
// and opts.MXOptions / opts.SubmissionOptions are appended as -o overrides to
// the two smtpd services in master.cf.
//
// # Unix sockets (milters, socketmap)
//
// Postfix's daemons (smtpd, cleanup, trivial-rewrite) run as the unprivileged
// user "postfix" (see PostfixIDs / Instance.PostfixUID) and connect to milter
// and socketmap unix sockets as that user. A socket a test creates must
// therefore
//
//   - live in a directory whose every ancestor the postfix user can search
//     (Instance.SocketDir(), or a directory made with TempDir(t)), and
//   - be writable by the postfix user: chmod it 0666 or chown it to
//     PostfixUID after creating it (a socket Go creates as root with the
//     usual umask 022 is 0755 and Postfix gets EACCES). ListenUnix does the
//     chmod for you.
//
// Keep socket paths short (the sun_path limit is 108 bytes); SocketDir() is
// short for that reason.
//
// # Requirements and skipping
//
// Postfix must be installed (Debian: apt-get install postfix sasl2-bin
// libsasl2-modules swaks) and the test must run as root (the Postfix master
// needs root). When either is missing, Start calls t.Skip, unless the
// environment variable BATV_E2E=1 is set, in which case the test fails: CI
// sets it so the end-to-end tests cannot be skipped silently there. The
// system's own Postfix instance and /etc/postfix are never touched (only
// read: Postfix itself reads its meta files from /etc/postfix).
//
// Several instances may run one after another or in parallel tests: each has
// its own directories, ports, master process and log. Cleanup stops the
// master (SIGTERM, as "postfix stop" does; waits for the whole process
// group) and removes the directory; set POSTFIXTEST_KEEP=1 to keep it for
// a post-mortem. An instance whose test binary died without cleanup is
// stopped and removed by the next Start in any test binary.
//
// # Example
//
//	inst := postfixtest.Start(t, postfixtest.Options{
//		Main: map[string]string{
//			"smtpd_milters":            "unix:" + sock,
//			"milter_default_action":    "tempfail",
//			"recipient_canonical_maps": "socketmap:unix:" + mapSock + ":batv",
//		},
//	})
//	res, err := inst.Submit(postfixtest.DefaultUser, postfixtest.DefaultPassword,
//		"alice@example.com", []string{"carol@remote.test"}, msg)
//	// res.Mail, res.Rcpts[i], res.Message: code, enhanced code, text
//	m := inst.WaitMessage(t, 20*time.Second, postfixtest.ToRcpt("carol@remote.test"))
//	// m.From is the envelope sender Postfix used towards the outside.
//
// Send runs one whole transaction. For a dialogue of one's own (a sender
// verification callout that ends with RSET, addresses written exactly as
// given, several transactions on one connection) use Dial and Conn.Cmd,
// which keep a transcript.
//
// Postfix programs print errors only when stderr is a terminal (else they
// go to the log, or nowhere for a bad main.cf); the harness runs them
// with a pseudo-terminal as stderr, so their complaints appear in errors.
//
// # Observed Postfix behaviour worth knowing (Postfix 3.7.11)
//
//   - A message the sink refuses at RCPT with a 5xx is bounced by Postfix
//     at once; the bounce (envelope sender "<>", recipient = the original
//     envelope sender, From: MAILER-DAEMON@myhostname) goes back through
//     cleanup and the queue manager and is delivered like any other mail,
//     here to the sink.
//   - recipient_canonical_maps IS applied to such locally generated bounces
//     (cleanup rewrites the bounce recipient, envelope and To: header), and
//     smtpd also accepts a recipient that recipient_canonical_maps knows,
//     even when relay_recipient_maps does not list it.
//   - Locally generated bounces do not pass through smtpd_milters or
//     non_smtpd_milters (internal_mail_filter_classes is empty by default).
//   - Postfix reads a table file (texthash, regexp, ...) again and again
//     while it changed within the last second (util/load_file.c): a table a
//     test writes just before Start or Reload delayed the first smtpd's
//     greeting by 1.8 s here. Date such files back (os.Chtimes).
//   - With smtpd_milters pointing at a dead socket and
//     milter_default_action = tempfail, the MX answers "451 4.7.1 Service
//     unavailable - try again later" at MAIL, and the submission port
//     answers AUTH with "454 4.3.0 Try again later" (and MAIL without AUTH
//     with the same 451); nothing is queued.
package postfixtest
