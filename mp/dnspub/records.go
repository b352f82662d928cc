package dnspub

import (
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// ServiceLabel is the owner-name prefix of the MP's own SRV record.
const ServiceLabel = "_ibcm-mp._tcp"

// Record is one SRV record of an MP.
type Record struct {
	Name     string // owner, e.g. "_ibcm-mp._tcp.corp.example."
	Target   string // the MP's host name, e.g. "mp1.corp.example."
	Port     uint16
	Priority uint16
	Weight   uint16
}

// String returns r in zone-file presentation without TTL and class:
// "_ibcm-mp._tcp.corp.example. SRV 0 0 8443 mp1.corp.example.".
func (r Record) String() string {
	return fmt.Sprintf("%s SRV %d %d %d %s", r.Name, r.Priority, r.Weight, r.Port, r.Target)
}

// Records returns the SRV records an MP publishes: _ibcm-mp._tcp.<zone>
// always, and with cmName also the Configuration Manager name
// _mssms_mp_<lowercase site code>._tcp.<zone> (left out when siteCode is
// empty). Names are made fully qualified; priority and weight are 0.
func Records(zone, target string, port uint16, siteCode string, cmName bool) []Record {
	zone, target = dns.CanonicalName(zone), dns.CanonicalName(target)
	recs := []Record{{Name: ServiceLabel + "." + zone, Target: target, Port: port}}
	if cmName && siteCode != "" {
		recs = append(recs, Record{
			Name:   "_mssms_mp_" + strings.ToLower(siteCode) + "._tcp." + zone,
			Target: target,
			Port:   port,
		})
	}
	return recs
}

// srv returns r as a miekg/dns SRV RR in the IN class with the given TTL,
// checking that its names are valid and that Name lies in zone.
func (r Record) srv(zone string, ttl uint32) (*dns.SRV, error) {
	name, target := dns.CanonicalName(r.Name), dns.CanonicalName(r.Target)
	if _, ok := dns.IsDomainName(name); !ok || r.Name == "" {
		return nil, fmt.Errorf("record %s: owner %q is not a valid domain name", r, r.Name)
	}
	if _, ok := dns.IsDomainName(target); !ok || r.Target == "" || target == "." {
		return nil, fmt.Errorf("record %s: target %q is not a valid host name", r, r.Target)
	}
	if !dns.IsSubDomain(zone, name) {
		return nil, fmt.Errorf("record %s: owner %q is not in zone %q", r, r.Name, zone)
	}
	if r.Port == 0 {
		return nil, fmt.Errorf("record %s: port is 0", r)
	}
	return &dns.SRV{
		Hdr:      dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: ttl},
		Priority: r.Priority,
		Weight:   r.Weight,
		Port:     r.Port,
		Target:   target,
	}, nil
}
