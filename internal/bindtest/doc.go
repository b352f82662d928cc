// Package bindtest owns a real BIND 9 (named) started for tests on a loopback
// port: a primary for one zone that accepts RFC 2136 updates signed with a
// fresh TSIG key, plus helpers that query and update it with the real dig and
// nsupdate binaries.
//
// In a test:
//
//	srv := bindtest.Start(t, "corp.test.") // stopped and removed when t ends
//	// send updates to srv.Addr signed with srv.KeyName / srv.Algorithm / srv.Secret
//	got := srv.Dig(t, "SRV", "_ibcm-mp._tcp.corp.test.")
//
// Each call starts its own named in a new temporary directory, listening on
// 127.0.0.1 (UDP and TCP) on a free port, with recursion, DNSSEC validation,
// NOTIFY and the control channel turned off. When named is not installed
// Start skips the test, or fails it when the environment variable CI is
// "true", with a hint to install it (make deps).
package bindtest
