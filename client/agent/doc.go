// Package agent owns the running device agent (`ibcm-client run`): it detects the device's
// location and keeps it current, talks to the management point for that location (hello,
// policy with an on-disk cache, check-in, status messages from the spool, the notification
// channel), renews the certificate at two thirds of its life, and answers `ibcm-client
// status`, `report`, `renew` and `enroll` over a Unix socket in the state directory, for
// its own user and root only (checked by the kernel-reported peer uid). It is
// the state directory's one writer while it runs: it holds client.LockDir, and `renew`
// and `enroll --force` hand their work to it. Every retry loop uses exponential
// backoff with jitter and a cap, so agents coming back after an outage spread out.
//
// It also serves remote-control sessions (remote.go): it hands session-requested and
// session-ended events to a remote/device Host, which it gives the identity, the policy,
// a CRL fetched through the MP and verified against the issuing CA (kept in the state
// directory), and the current MP connection for the relay leg (an HTTP/1.1 upgrade),
// the session reports and the recording uploads; local users reach it on the share
// socket (Options.ShareSocket).
package agent
