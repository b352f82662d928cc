// Package location owns deciding whether the device is on the intranet or the
// internet, with the evidence: which resolvers were asked what, what they
// answered, and which management points proved, with a TLS handshake, to be
// management points of this site (DESIGN.md §7).
//
// Detect reads the resolvers from resolv.conf, asks them (all at once, short
// timeout, retries) for the SRV records of the intranet MP names under each
// intranet DNS suffix, and probes the SRV targets in RFC 2782 order. A target
// counts only when its TLS certificate chains to the site's pinned roots,
// names the target host and carries the URI urn:ibcm:site:<code>:role:mp, and
// when the MP, asked GET /v1/probe over that same verified connection, answers
// that this is its intranet listener: the site's internet MP holds an MP
// certificate of this site too (in both modes the same one), so a hostile
// resolver pointing the SRV record at it proves nothing. DNS alone never
// decides. The internet MPs are probed at the same time, so a
// black-holed intranet DNS costs the short DNS timeout, not a hang.
//
//	d := location.Detect(ctx, location.Config{
//		SiteCode:         "P01",
//		IntranetSuffixes: []string{"corp.example"},
//		InternetMPs:      []string{"mp.example.com:443"},
//		Roots:            roots,
//		ClientCert:       &cert,
//	})
//	fmt.Println(d.Location, d.MP, d.Reason)
//
// The agent re-detects when resolv.conf changes (WatchFile), when addresses
// or routes change (WatchNetwork, Linux netlink), when its MP fails and on a
// timer, and passes every result through a Hysteresis so that a flapping
// network does not flap the agent.
//
// The package imports only the standard library, github.com/miekg/dns and
// internal/wire, to keep the agent small.
package location
