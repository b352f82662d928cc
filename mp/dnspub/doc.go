// Package dnspub owns publishing a management point's SRV records to the
// intranet DNS server with RFC 2136 dynamic updates signed with TSIG,
// refreshing them and removing them on shutdown.
//
// Clients on the intranet find their MP through these records
// (_ibcm-mp._tcp.<domain>, and optionally Configuration Manager's
// _mssms_mp_<site code>._tcp.<domain>); location detection then proves the
// target with a TLS handshake, so DNS alone never decides.
//
// Usage:
//
//	recs := dnspub.Records("corp.example.", "mp1.corp.example.", 8443, "P01", true)
//	pub, err := dnspub.New(cfg, recs, log.With().Str("component", "dnspub").Logger())
//	if err != nil { ... }
//	go pub.Run(ctx) // publishes, refreshes every TTL/2, removes when ctx ends
//
// Updates add and remove exactly this MP's resource records, so several MPs
// can publish at the same name. They go over TCP and every reply must carry a
// valid TSIG signature from the server. The secret is never logged.
package dnspub
