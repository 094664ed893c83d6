// Package policy decides what batv does with mail: which messages are ours
// to sign, and what happens to each recipient of the mail we receive. It
// is the pure core every front end shares (the milter, the Postfix lookup
// tables and the Postfix policy service): it does no I/O, keeps no global
// state, takes the time as an argument and returns decisions as data.
//
// A Policy is compiled once from a Config and a keyring with New and is
// then immutable and safe for concurrent use; a daemon builds a new one on
// reload and swaps it in.
//
// Outbound, a front end asks Origin whether the SMTP client is one of our
// users (authenticated, on an internal network, local, or on a submission
// listener) and, at the end of the message, Sign for the signed envelope
// sender.
//
// Inbound, a front end opens a Transaction at MAIL with the sender as
// received, asks it for a Decision at each RCPT and applies the decision:
// refuse the recipient with Decision.Reply, or accept it, deliver it to
// Decision.Rewrite and add Decision.Mark as a status header.
//
// Lookup answers the Postfix lookup tables (TableUntag, TableStrip).
package policy
