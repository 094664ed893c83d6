package policy

import "net/netip"

// LogAttrs are the attributes (for log/slog) of the line every inbound
// front end logs for decision d, with the message "recipient": the queue
// id, the direction, the outcome, action and reason, the recipient as
// received, then the key id, the stage, the mailbox and the untagged
// address when they apply, the sender ("<>" for the null sender), whether
// the transaction is a bounce, and the client's address when there is
// one, to match the line with the MTA's own (NOQUEUE: reject: RCPT from
// host[addr]) when there is no queue id yet.
func (d Decision) LogAttrs(queueID, rcpt, sender string, bounce bool, client netip.Addr) []any {
	attrs := []any{"queue_id", queueID, "direction", "inbound", "outcome", d.Status.String(),
		"action", d.Action.String(), "reason", d.Reason, "rcpt", rcpt}
	if d.KeyID >= 0 {
		attrs = append(attrs, "key_id", d.KeyID)
	}
	if d.AtData {
		attrs = append(attrs, "stage", "data")
	}
	if d.Mailbox != "" {
		attrs = append(attrs, "mailbox", d.Mailbox)
	}
	if d.Rewrite != "" {
		attrs = append(attrs, "untagged", d.Rewrite)
	}
	if sender == "" {
		sender = "<>"
	}
	attrs = append(attrs, "sender", sender, "bounce", bounce)
	if client.IsValid() {
		attrs = append(attrs, "client", client)
	}
	return attrs
}
