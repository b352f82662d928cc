package location

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// maxNameservers bounds the nameservers used; glibc uses three, more only cost queries.
const maxNameservers = 8

// maxResolvConf bounds how much of the resolver configuration is read.
const maxResolvConf = 1 << 20

// ParseResolvConf returns the nameservers of resolv.conf-format data as "IP:port"
// ("[IPv6]:port"), in file order, without duplicates, at most 8. A nameserver is an IP
// address, optionally with a port as IP:PORT or [IPv6]:PORT (port 53 otherwise); an IPv6
// address may carry a zone (fe80::1%eth0). Comments (# or ;), other keywords (search,
// domain, options, ...) and blank lines are ignored; a nameserver line that cannot be
// used is ignored too and described in skipped, for the evidence.
func ParseResolvConf(data []byte) (nameservers, skipped []string) {
	seen := map[string]bool{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		f := strings.Fields(line)
		if f[0] != "nameserver" {
			continue
		}
		if len(f) < 2 {
			skipped = append(skipped, fmt.Sprintf("line %d: nameserver without an address", i+1))
			continue
		}
		ap, err := parseNameserver(f[1])
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("line %d: %v", i+1, err))
			continue
		}
		s := ap.String()
		switch {
		case seen[s]:
			continue
		case len(nameservers) == maxNameservers:
			skipped = append(skipped, fmt.Sprintf("line %d: nameserver %s: more than %d nameservers", i+1, s, maxNameservers))
			continue
		}
		seen[s] = true
		nameservers = append(nameservers, s)
	}
	return nameservers, skipped
}

// parseNameserver parses "IP", "IP:PORT", "[IPv6]" or "[IPv6]:PORT".
func parseNameserver(s string) (netip.AddrPort, error) {
	bad := func(why string) (netip.AddrPort, error) {
		return netip.AddrPort{}, fmt.Errorf("nameserver %q: %s", s, why)
	}
	if a, err := netip.ParseAddr(s); err == nil { // bare IPv4 or IPv6, the usual case
		return netip.AddrPortFrom(a.Unmap(), 53), nil
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		a, err := netip.ParseAddr(s[1 : len(s)-1])
		if err != nil || !a.Is6() || a.Is4In6() {
			return bad("not an IPv6 address in brackets")
		}
		return netip.AddrPortFrom(a, 53), nil
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return bad("not an IP address")
	}
	host, port := s[:i], s[i+1:]
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 || port[0] == '+' {
		return bad("the port must be 1-65535")
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		a, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !a.Is6() || a.Is4In6() {
			return bad("not an IPv6 address in brackets")
		}
		return netip.AddrPortFrom(a, uint16(p)), nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.Is4() {
		return bad("not an IP address (write an IPv6 address with a port as [addr]:port)")
	}
	return netip.AddrPortFrom(a, uint16(p)), nil
}

// readResolvConf reads the nameservers from path, as a step of evidence.
func readResolvConf(path string) ([]string, Step) {
	step := Step{Kind: KindResolvConf, Target: path}
	f, err := os.Open(path)
	if err != nil {
		step.Error = err.Error()
		return nil, step
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxResolvConf))
	if err != nil {
		step.Error = fmt.Sprintf("reading %s: %v", path, err)
		return nil, step
	}
	servers, skipped := ParseResolvConf(data)
	if len(servers) == 0 {
		step.Error = "no nameservers"
	} else {
		step.Result = "nameservers " + strings.Join(servers, ", ")
	}
	if len(skipped) > 0 {
		if step.Result != "" {
			step.Result += "; "
		}
		step.Result += "ignored " + strings.Join(skipped, "; ")
	}
	return servers, step
}
