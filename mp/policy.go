package mp

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// DefaultPolicyName is the policy of every device not in a group with a policy.
const DefaultPolicyName = "default"

// DefaultPolicy is the policy a new site starts with: the location settings devices got at
// enrollment, and remote control enabled for full control with the user's consent.
func DefaultPolicy(b wire.Bootstrap) wire.Policy {
	return wire.Policy{
		Name:    DefaultPolicyName,
		Version: 1,
		Client:  wire.ClientSettings{CheckinInterval: "15m", RenewalThreshold: 2.0 / 3},
		Location: wire.LocationSettings{IntranetDNSSuffixes: b.IntranetDNSSuffixes, SRVNames: b.SRVNames,
			InternetMPNames: b.InternetMPs, RedetectInterval: "1h"},
		RemoteControl: wire.RemoteControlSettings{
			Enabled: true, AccessLevel: "full", PromptUser: true, ConsentTimeout: "30s", AllowDirect: true, DirectPort: 2701,
			ShowConnectionBar: true, PlaySound: "start_end", AllowChat: true, PermittedViewers: []string{}, PromptClipboard: true,
		},
	}
}

var (
	policyNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	srvNameRE    = regexp.MustCompile(`^_[a-z0-9-]{1,62}\._(tcp|udp)$`)
	hostLabelRE  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
)

func checkHost(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !hostLabelRE.MatchString(l) {
			return false
		}
	}
	return true
}

// ValidatePolicy checks a policy document and names the first bad key.
func ValidatePolicy(p wire.Policy) error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}
	if !policyNameRE.MatchString(p.Name) {
		bad("name", "1-64 lower-case letters, digits, '.', '_' or '-' (got %q)", p.Name)
	}
	if d, err := time.ParseDuration(p.Client.CheckinInterval); err != nil || d < time.Minute || d > 24*time.Hour {
		bad("client.checkin_interval", "a duration from 1m to 24h (got %q)", p.Client.CheckinInterval)
	}
	if t := p.Client.RenewalThreshold; t < 0.5 || t > 0.9 {
		bad("client.renewal_threshold", "a fraction of the lifetime from 0.5 to 0.9 (got %v)", t)
	}
	l := p.Location
	if len(l.IntranetDNSSuffixes) > 16 {
		bad("location.intranet_dns_suffixes", "at most 16")
	}
	for _, s := range l.IntranetDNSSuffixes {
		if !checkHost(s) {
			bad("location.intranet_dns_suffixes", "%q is not a DNS suffix", s)
		}
	}
	if len(l.SRVNames) == 0 || len(l.SRVNames) > 8 {
		bad("location.srv_names", "1 to 8 names like _ibcm-mp._tcp")
	}
	for _, s := range l.SRVNames {
		if !srvNameRE.MatchString(s) {
			bad("location.srv_names", "%q is not a service name like _ibcm-mp._tcp", s)
		}
	}
	if len(l.InternetMPNames) > 16 {
		bad("location.internet_mp_names", "at most 16")
	}
	for _, s := range l.InternetMPNames {
		host := s
		if h, _, err := net.SplitHostPort(s); err == nil {
			host = h
		}
		if !checkHost(host) && net.ParseIP(host) == nil {
			bad("location.internet_mp_names", "%q is not host or host:port", s)
		}
	}
	if d, err := time.ParseDuration(l.RedetectInterval); err != nil || d < time.Minute || d > 25*time.Hour {
		bad("location.redetect_interval", "a duration from 1m to 25h (got %q)", l.RedetectInterval)
	}
	rc := p.RemoteControl
	switch rc.AccessLevel {
	case "none", "view", "full":
	default:
		bad("remote_control.access_level", "none, view or full (got %q)", rc.AccessLevel)
	}
	switch rc.PlaySound {
	case "none", "start_end", "repeatedly":
	default:
		bad("remote_control.play_sound", "none, start_end or repeatedly (got %q)", rc.PlaySound)
	}
	if d, err := time.ParseDuration(rc.ConsentTimeout); err != nil || d < 5*time.Second || d > 10*time.Minute {
		bad("remote_control.consent_timeout", "a duration from 5s to 10m (got %q)", rc.ConsentTimeout)
	}
	if rc.DirectPort < 1 || rc.DirectPort > 65535 {
		bad("remote_control.direct_port", "a TCP port from 1 to 65535 (got %d)", rc.DirectPort)
	}
	for key, v := range map[string]string{"remote_control.max_duration": rc.MaxDuration, "remote_control.idle_timeout": rc.IdleTimeout} {
		if v == "" || v == "0" {
			continue
		}
		if d, err := time.ParseDuration(v); err != nil || d < time.Minute || d > 24*time.Hour {
			bad(key, "a duration from 1m to 24h, or \"0\" for none (got %q)", v)
		}
	}
	if len(rc.PermittedViewers) > 64 {
		bad("remote_control.permitted_viewers", "at most 64")
	}
	for _, v := range rc.PermittedViewers {
		if v == "" || len(v) > 128 || strings.ContainsAny(v, "\n\r\x00") {
			bad("remote_control.permitted_viewers", "%q is not a user or group name", v)
		}
	}
	return errors.Join(errs...)
}

// withDefaults fills the remote-control fields a document stored before they existed (or
// sent without them) leaves empty.
func withDefaults(p wire.Policy) wire.Policy {
	if p.RemoteControl.ConsentTimeout == "" {
		p.RemoteControl.ConsentTimeout = defaultConsentTimeout.String()
	}
	if p.RemoteControl.DirectPort == 0 {
		p.RemoteControl.DirectPort = defaultDirectPort
	}
	if p.RemoteControl.PermittedViewers == nil {
		p.RemoteControl.PermittedViewers = []string{}
	}
	return p
}

// policyETag names a policy as served: its name and version, the audit key it carries
// (so a device that cached a policy served before the site had one fetches it again), and
// its deployments (so a device fetches it again when they change).
func policyETag(p wire.Policy) string {
	tag := fmt.Sprintf(`%s.%d`, p.Name, p.Version)
	if p.AuditKey != "" {
		sum := sha256.Sum256([]byte(p.AuditKey))
		tag += fmt.Sprintf(".%x", sum[:4])
	}
	if len(p.Deployments) > 0 {
		b, _ := json.Marshal(p.Deployments)
		sum := sha256.Sum256(b)
		tag += fmt.Sprintf(".d%x", sum[:8])
	}
	return `"` + tag + `"`
}

// policyCache keeps resolved policies in memory; device events clear it. gen counts the
// clears, so a lookup that raced a clear does not store what it read before it.
type policyCache struct {
	mu       sync.RWMutex
	gen      uint64
	byDevice map[string]string            // device -> policy name
	byName   map[string]*wire.Policy      // name -> document
	deploys  map[string][]wire.Deployment // device -> the deployments of its groups (deployments.go)
}

// forgetDevice drops the policy resolved for one device (its groups changed).
func (c *policyCache) forgetDevice(device string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.byDevice, device)
	delete(c.deploys, device)
}

func (c *policyCache) clear(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if name == "" {
		c.byDevice = map[string]string{}
		c.deploys = map[string][]wire.Deployment{}
	}
	delete(c.byName, name)
}

// clearDeployments drops every device's deployments (a deployment was made or removed).
func (c *policyCache) clearDeployments() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.deploys = map[string][]wire.Deployment{}
}

func (m *MP) ensureDefaultPolicy(ctx context.Context) error {
	p := withDefaults(m.o.DefaultPolicy)
	p.Name, p.Version = DefaultPolicyName, 1
	if err := ValidatePolicy(p); err != nil {
		return fmt.Errorf("mp: the default policy: %w", err)
	}
	doc, _ := json.Marshal(p)
	_, err := m.db.Exec(ctx, `INSERT INTO policies (name, version, document, updated_at, updated_by) VALUES (?, 1, ?, ?, 'site')
		ON CONFLICT (name) DO NOTHING`, DefaultPolicyName, string(doc), m.now().Unix())
	return err
}

// Policy returns a named policy.
func (m *MP) Policy(ctx context.Context, name string) (wire.Policy, error) {
	m.policies.mu.RLock()
	p, ok := m.policies.byName[name]
	gen := m.policies.gen
	m.policies.mu.RUnlock()
	if ok {
		return *p, nil
	}
	var doc string
	err := m.db.QueryRow(ctx, `SELECT document FROM policies WHERE name = ?`, name).Scan(&doc)
	if errors.Is(err, sql.ErrNoRows) {
		return wire.Policy{}, api.Errorf(http.StatusNotFound, "not_found", "no policy %q", name)
	}
	if err != nil {
		return wire.Policy{}, err
	}
	var pol wire.Policy
	if err := json.Unmarshal([]byte(doc), &pol); err != nil {
		return wire.Policy{}, fmt.Errorf("stored policy %s: %w", name, err)
	}
	pol = withDefaults(pol)
	m.policies.mu.Lock()
	if m.policies.gen == gen {
		m.policies.byName[name] = &pol
	}
	m.policies.mu.Unlock()
	return pol, nil
}

// devicePolicy resolves a device's policy: that of its group with the lowest priority
// number that has one, else the default.
func (m *MP) devicePolicy(ctx context.Context, device string) (wire.Policy, error) {
	m.policies.mu.RLock()
	name, ok := m.policies.byDevice[device]
	gen := m.policies.gen
	m.policies.mu.RUnlock()
	if !ok {
		err := m.db.QueryRow(ctx, `SELECT g.policy FROM device_groups g JOIN group_members gm ON gm.group_name = g.name
			WHERE gm.device_id = ? AND g.policy <> '' ORDER BY g.priority, g.name LIMIT 1`, device).Scan(&name)
		if errors.Is(err, sql.ErrNoRows) {
			name = DefaultPolicyName
		} else if err != nil {
			return wire.Policy{}, err
		}
		m.policies.mu.Lock()
		if m.policies.gen == gen {
			m.policies.byDevice[device] = name
		}
		m.policies.mu.Unlock()
	}
	pol, err := m.Policy(ctx, name)
	if err != nil {
		return pol, err
	}
	pol.AuditKey = m.auditPub // the agent seals recordings to it
	pol.Deployments, err = m.deviceDeployments(ctx, device)
	return pol, err
}

func (m *MP) handlePolicy(w http.ResponseWriter, r *http.Request, p *peer) error {
	pol, err := m.devicePolicy(r.Context(), p.id.ID)
	if err != nil {
		return err
	}
	tag := policyETag(pol)
	w.Header().Set("ETag", tag)
	if match := r.Header.Get("If-None-Match"); match != "" && match == tag {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	api.WriteJSON(w, http.StatusOK, pol)
	return nil
}

// SetPolicy stores a new version of a named policy and tells every device to fetch its
// policy again.
func (m *MP) SetPolicy(ctx context.Context, p wire.Policy, by string) (wire.Policy, error) {
	p = withDefaults(p)
	p.Deployments = nil // the MP adds them when serving, from the device's groups
	if err := ValidatePolicy(p); err != nil {
		return wire.Policy{}, api.Wrap(err, http.StatusBadRequest, "invalid_policy", err.Error())
	}
	err := m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		var version int
		err := tx.QueryRow(`SELECT version FROM policies WHERE name = ?`, p.Name).Scan(&version)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		p.Version = version + 1
		doc, _ := json.Marshal(p)
		if _, err := tx.Exec(`INSERT INTO policies (name, version, document, updated_at, updated_by) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET version = excluded.version, document = excluded.document,
				updated_at = excluded.updated_at, updated_by = excluded.updated_by`,
			p.Name, p.Version, string(doc), m.now().Unix(), by); err != nil {
			return err
		}
		return m.hub.publish(tx, siteEvent{Kind: kindPolicy, Policy: p.Name})
	})
	if err != nil {
		return wire.Policy{}, err
	}
	return p, nil
}

// Policies lists every policy.
func (m *MP) Policies(ctx context.Context) ([]wire.Policy, error) {
	rows, err := m.db.Query(ctx, `SELECT document FROM policies ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []wire.Policy{}
	for rows.Next() {
		var doc string
		if err := rows.Scan(&doc); err != nil {
			return nil, err
		}
		var p wire.Policy
		if err := json.Unmarshal([]byte(doc), &p); err != nil {
			return nil, err
		}
		out = append(out, withDefaults(p))
	}
	return out, rows.Err()
}
