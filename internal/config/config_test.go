package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

type duration time.Duration

func (d *duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration like 720h", n.Line, n.Value)
	}
	*d = duration(v)
	return nil
}

type testConfig struct {
	Version int      `yaml:"version"`
	Site    testSite `yaml:"site"`
	MP      struct {
		MaxChannels int            `yaml:"max_channels_per_device,omitempty"`
		Park        *bool          `yaml:"park_idle_channels,omitempty"`
		Ratio       float64        `yaml:"ratio"`
		Small       uint8          `yaml:"small"`
		TTL         duration       `yaml:"ttl"`
		Names       []string       `yaml:"names"`
		DNS         *testDNS       `yaml:"dns,omitempty"`
		Servers     []testDNS      `yaml:"servers"`
		Labels      map[string]int `yaml:"labels"`
		Timeout     time.Duration  `yaml:"timeout"`
		On          bool           `yaml:"on_flag"`
	} `yaml:"mp"`
	Untagged   string
	Skipped    string `yaml:"-"`
	testInline `yaml:",inline"`
}

type testSite struct {
	Code         string `yaml:"code"`
	IntranetName string `yaml:"intranet_name"`
	InternetName string `yaml:"internet_name"`
}

type testDNS struct {
	Zone string `yaml:"zone"`
}

type testInline struct {
	Extra string `yaml:"extra"`
}

func TestDecodeGood(t *testing.T) {
	data := `# a comment
version: 1
site: {code: P01, intranet_name: ibcm.corp.example}
mp:
  max_channels_per_device: 3
  park_idle_channels: false
  ratio: 1
  small: 255
  ttl: 5m
  names: [a, b]
  dns: {zone: corp.example}
  servers: [{zone: a}, {zone: b}]
  labels: {x: 1}
  timeout: 90s
  on_flag: yes
untagged: yes-it-is
extra: inlined
`
	var c testConfig
	if err := Decode("site.yaml", []byte(data), &c); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if c.Site.IntranetName != "ibcm.corp.example" || c.MP.MaxChannels != 3 || c.MP.Park == nil || *c.MP.Park ||
		time.Duration(c.MP.TTL) != 5*time.Minute || c.MP.DNS.Zone != "corp.example" || len(c.MP.Servers) != 2 ||
		c.Untagged != "yes-it-is" || c.Extra != "inlined" || c.MP.Labels["x"] != 1 || c.MP.Timeout != 90*time.Second || !c.MP.On {
		t.Errorf("decoded %+v", c)
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string // each must be in the error, in order of lines
	}{
		{"empty file", "", []string{"site.yaml: the file is empty"}},
		{"only comments", "# nothing here\n\n", []string{"site.yaml: the file is empty"}},
		{"null document", "~\n", []string{"site.yaml:1: the file is empty"}},
		{"unknown key with suggestion", "version: 1\nsite:\n  code: P01\n  intranet_nmae: x\n",
			[]string{"site.yaml:4: site.intranet_nmae: unknown key (did you mean intranet_name?)"}},
		{"transposed letters", "sit: {}\n", []string{"site.yaml:1: sit: unknown key (did you mean site?)"}},
		{"unknown key, nothing close", "mp: {zzzzzzzzzz: 1}\n",
			[]string{"site.yaml:1: mp.zzzzzzzzzz: unknown key (known keys here: dns, labels, max_channels_per_device, names, on_flag, park_idle_channels, ratio, servers, small, timeout, ttl)"}},
		{"skipped field is unknown", "skipped: x\n", []string{"site.yaml:1: skipped: unknown key"}},
		{"number", "mp:\n  max_channels_per_device: three\n",
			[]string{`site.yaml:2: mp.max_channels_per_device: must be a number (got "three")`}},
		{"whole number", "mp: {max_channels_per_device: 2.5}\n", []string{"mp.max_channels_per_device: must be a whole number"}},
		{"out of range", "mp: {small: 256}\n", []string{"site.yaml:1: mp.small: the number 256 is out of range"}},
		{"negative unsigned", "mp: {small: -1}\n", []string{"mp.small: the number -1 is out of range"}},
		{"bool", "mp: {park_idle_channels: maybe}\n", []string{`mp.park_idle_channels: must be true or false (got "maybe")`}},
		{"float", "mp: {ratio: lots}\n", []string{`mp.ratio: must be a number (got "lots")`}},
		{"string given a mapping", "site: {code: {a: b}}\n", []string{"site.yaml:1: site.code: must be a string (got a mapping)"}},
		{"struct given a scalar", "site: P01\n", []string{`site: must be a mapping of keys (got "P01")`}},
		{"list given a scalar", "mp: {names: a}\n", []string{`mp.names: must be a list (got "a")`}},
		{"list element", "mp:\n  servers:\n    - zone: a\n    - zonee: b\n",
			[]string{"site.yaml:4: mp.servers[1].zonee: unknown key (did you mean zone?)"}},
		{"map key not a name", "mp: {labels: {? [a]: 1}}\n", []string{"site.yaml:1: mp.labels: a key must be a plain name (got a list)"}},
		{"map value", "mp: {labels: {x: y}}\n", []string{`mp.labels.x: must be a number (got "y")`}},
		{"duration", "mp: {timeout: soon}\n", []string{`site.yaml:1: mp.timeout: must be a duration like 30s or 720h (got "soon")`}},
		{"unmarshaler", "mp:\n  ttl: soon\n", []string{`site.yaml:2: mp.ttl: "soon" is not a duration like 720h`}},
		{"syntax", "site: {code: P01\n", []string{"site.yaml:"}},
		{"two documents", "version: 1\n---\nversion: 2\n", []string{"site.yaml:2: a second YAML document"}},
		{"the root is a list", "- a\n", []string{"site.yaml:1: must be a mapping of keys (got a list)"}},
		{"several mistakes", "versio: 1\nsite: {cod: x}\nmp: {small: x}\n", []string{
			"site.yaml:1: versio: unknown key (did you mean version?)",
			"site.yaml:2: site.cod: unknown key (did you mean code?)",
			`site.yaml:3: mp.small: must be a number (got "x")`}},
		{"alias", "a: &x {zon: 1}\nmp: {dns: *x}\n", []string{"site.yaml:1: a: unknown key", "mp.dns.zon: unknown key (did you mean zone?)"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var c testConfig
			err := Decode("site.yaml", []byte(tc.yaml), &c)
			if err == nil {
				t.Fatalf("Decode(%q) = nil, want an error", tc.yaml)
			}
			msg := err.Error()
			for _, w := range tc.want {
				i := strings.Index(msg, w)
				if i < 0 {
					t.Fatalf("error\n%s\nwant it to contain %q", msg, w)
				}
				msg = msg[i+len(w):]
			}
			if strings.Contains(err.Error(), "not found in type") || strings.Contains(err.Error(), "cannot unmarshal") {
				t.Errorf("error %q speaks yaml.v3's Go words", err)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Errorf("error %T is not a *config.Error", err)
			}
		})
	}
}

func TestEmptyIsErrEmpty(t *testing.T) {
	for _, data := range []string{"", "\n# c\n", "null\n"} {
		var c testConfig
		if err := Decode("x.yaml", []byte(data), &c); !errors.Is(err, ErrEmpty) {
			t.Errorf("Decode(%q) = %v, want ErrEmpty", data, err)
		}
	}
}

func TestDistance(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"abc", "abc", 0}, {"abc", "", 3}, {"intranet_nmae", "intranet_name", 1},
		{"kitten", "sitting", 3}, {"ca", "ac", 1}, {"listn", "listen", 1},
	}
	for _, tc := range cases {
		if got := distance(tc.a, tc.b); got != tc.want {
			t.Errorf("distance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

// FuzzDecode: any input gives nil or an error that starts with the file name, never a
// panic, and never one in yaml.v3's Go words (the walk missed a key or a type).
func FuzzDecode(f *testing.F) {
	for _, s := range []string{"", "version: 1\n", "site: {code: P01}\n", "mp: {servers: [{zone: a}]}\n",
		"a: &x [*x]\n", "mp: {small: 99999999999999999999999}\n", "---\n---\n", "mp: {labels: {? [a]: 1}}\n",
		"<<: {version: 1}\n", "mp: {ttl: [a]}\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var c testConfig
		err := Decode("f.yaml", data, &c)
		if err == nil {
			return
		}
		if !strings.HasPrefix(err.Error(), "f.yaml") {
			t.Fatalf("error %q does not start with the file name", err)
		}
		// The walk finds every key and type yaml.v3 would refuse: its Go words never show.
		if msg := err.Error(); strings.Contains(msg, "cannot unmarshal") || strings.Contains(msg, "not found in type") {
			t.Fatalf("Decode(%q) let yaml.v3's message through: %v", data, err)
		}
	})
}
