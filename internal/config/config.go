// Package config owns strict decoding of the YAML files ibcm loads (site.yaml, policy
// files): every mistake is reported with the file, the line and the key path, in the
// words of the file's own keys, as in
//
//	site.yaml:12: site.intranet_nmae: unknown key (did you mean intranet_name?)
//	site.yaml:20: mp.max_channels_per_device: must be a number (got "three")
//	site.yaml: the file is empty
//
// Decode walks the parsed yaml.Node tree against the target struct's yaml tags before
// decoding, so it finds every unknown key and wrong type at once instead of yaml.v3's
// "field x not found in type site.Identity". Defaults and Validate stay with each loader.
package config

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Error is one mistake in a config file.
type Error struct {
	File string // as given to Decode, e.g. site.yaml or /etc/ibcm/site.yaml
	Line int    // 1-based; 0 when the mistake has no line (an empty file)
	Path string // key path, e.g. mp.dns.zone or location.srv_names[1]; "" for the file itself
	Msg  string

	cause error // what errors.Is sees through it (ErrEmpty)
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the sentinel the error stands for, if any.
func (e *Error) Unwrap() error { return e.cause }

// ErrEmpty is wrapped by the error for a file with no YAML content (empty or only comments).
var ErrEmpty = errors.New("the file is empty")

// maxErrors bounds how many mistakes one Decode reports.
const maxErrors = 20

// Decode strictly decodes the YAML document data into v (a pointer to a struct). name is
// the file name used in messages. Unknown keys, values of the wrong type, an empty file
// and more than one document are errors; all mistakes found are joined, each an *Error.
func Decode(name string, data []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("config.Decode: want a non-nil pointer, got %T", v)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &Error{File: name, Msg: ErrEmpty.Error(), cause: ErrEmpty}
		}
		return syntaxError(name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return &Error{File: name, Line: extra.Line, Msg: "a second YAML document (---): a config file holds one"}
	} else if !errors.Is(err, io.EOF) {
		return syntaxError(name, err)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	if root.Kind == yaml.DocumentNode || isNull(root) {
		return &Error{File: name, Line: root.Line, Msg: ErrEmpty.Error(), cause: ErrEmpty}
	}
	w := walker{file: name}
	w.walk(root, rv.Elem().Type(), "", 0)
	if len(w.errs) > 0 {
		return errors.Join(w.errs...)
	}
	// The walk checked every key and type; the decode fills v. KnownFields stays on as a
	// second line in case a construct escaped the walk.
	dec = yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return syntaxError(name, err)
	}
	return nil
}

// InFile puts the file name in front of each of the errors err joins (a loader's
// Validate names the key; this adds the file): "site.yaml: mp.mode: must be ...".
func InFile(file string, err error) error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, InFile(file, e))
		}
		return errors.Join(out...)
	}
	return fmt.Errorf("%s: %w", file, err)
}

// syntaxError turns yaml.v3's "yaml: line 3: ..." into "name:3: ...".
func syntaxError(name string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if i := strings.IndexByte(rest, ':'); i > 0 {
			if line, err := strconv.Atoi(rest[:i]); err == nil {
				return &Error{File: name, Line: line, Msg: strings.TrimSpace(rest[i+1:])}
			}
		}
	}
	return &Error{File: name, Msg: msg}
}

type walker struct {
	file   string
	errs   []error
	visits int // nodes walked, aliases expanded (maxVisits)
}

func (w *walker) add(n *yaml.Node, path, format string, args ...any) {
	if len(w.errs) == maxErrors {
		w.errs = append(w.errs, &Error{File: w.file, Line: n.Line, Msg: "more mistakes follow; fix these first"})
	}
	if len(w.errs) > maxErrors {
		return
	}
	w.errs = append(w.errs, &Error{File: w.file, Line: n.Line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

var (
	yamlUnmarshaler = reflect.TypeFor[yaml.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// maxDepth bounds the walk's nesting. maxVisits bounds its work: the walk follows
// aliases, which the node tree keeps unexpanded (yaml.v3's limit on aliasing applies only
// to the decode after the walk), and repeated merge keys multiply, so a kilobyte would
// walk billions of nodes. A config file has a few hundred.
const (
	maxDepth  = 64
	maxVisits = 100_000
)

// spend counts one step of the walk against maxVisits; false once they are spent (the
// first time, with the error).
func (w *walker) spend(n *yaml.Node, path string) bool {
	if w.visits++; w.visits > maxVisits {
		if w.visits == maxVisits+1 {
			w.add(n, path, "too many aliases: the file expands to more than %d values", maxVisits)
		}
		return false
	}
	return true
}

// walk checks node n against type t at key path.
func (w *walker) walk(n *yaml.Node, t reflect.Type, path string, depth int) {
	if depth > maxDepth {
		w.add(n, path, "nested too deeply")
		return
	}
	if !w.spend(n, path) {
		return
	}
	n = resolve(n)
	if isNull(n) {
		return // the zero value
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(yamlUnmarshaler) {
		// The type parses itself (a duration, say): let it, and put its words under the key.
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			w.add(n, path, "%s", unmarshalerMessage(err))
		}
		return
	}
	if n.Kind == yaml.ScalarNode && reflect.PointerTo(t).Implements(textUnmarshaler) {
		if err := reflect.New(t).Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			w.add(n, path, "%v", err)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.add(n, path, "must be a mapping of keys (got %s)", describe(n))
			return
		}
		fields := structFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := resolve(n.Content[i]), n.Content[i+1]
			if k.Value == "<<" && k.ShortTag() == "!!merge" {
				w.walk(v, t, path, depth+1)
				continue
			}
			f, ok := fields[k.Value]
			if !ok {
				if !w.spend(k, path) {
					return
				}
				if len(w.errs) < maxErrors { // suggest costs: not for a message dropped
					w.add(n.Content[i], join(path, k.Value), "unknown key%s", suggest(k.Value, fields)) // the alias's line
				} else {
					w.add(n.Content[i], join(path, k.Value), "unknown key")
				}
				continue
			}
			w.walk(v, f, join(path, k.Value), depth+1)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.add(n, path, "must be a mapping of keys (got %s)", describe(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := resolve(n.Content[i]), n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				w.add(k, path, "a key must be a plain name (got %s)", describe(k))
				continue
			}
			w.walk(k, t.Key(), join(path, k.Value), depth+1)
			w.walk(v, t.Elem(), join(path, k.Value), depth+1)
		}
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			w.add(n, path, "must be a list (got %s)", describe(n))
			return
		}
		for i, e := range n.Content {
			w.walk(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), depth+1)
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			w.add(n, path, "must be a string (got %s)", describe(n))
		}
	case reflect.Bool:
		// yaml.v3 also takes YAML 1.1's yes/no/on/off for a bool.
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!bool" && !slices.Contains(yaml11Bools, n.Value)) {
			w.add(n, path, "must be true or false (got %s)", describe(n))
		}
	case reflect.Int64:
		if t == durationType && n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
			if _, err := time.ParseDuration(n.Value); err != nil {
				w.add(n, path, "must be a duration like 30s or 720h (got %s)", describe(n))
			}
			return
		}
		w.checkInt(n, t, path)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		w.checkInt(n, t, path)
	case reflect.Float32, reflect.Float64:
		if tag := n.ShortTag(); n.Kind != yaml.ScalarNode || (tag != "!!int" && tag != "!!float") {
			w.add(n, path, "must be a number (got %s)", describe(n))
		}
	}
	// Interfaces and the rest take whatever yaml.v3 makes of them.
}

// yaml11Bools are the YAML 1.1 words yaml.v3 decodes into a bool.
var yaml11Bools = []string{"y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "n", "N", "no", "No", "NO", "off", "Off", "OFF"}

var durationType = reflect.TypeFor[time.Duration]()

// checkInt checks an integer scalar for type t.
func (w *walker) checkInt(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		if n.ShortTag() == "!!float" {
			w.add(n, path, "must be a whole number (got %s)", describe(n))
		} else {
			w.add(n, path, "must be a number (got %s)", describe(n))
		}
		return
	}
	if !fitsInt(n, t) {
		w.add(n, path, "the number %s is out of range", n.Value)
	}
}

// fitsInt reports whether the integer scalar n fits type t.
func fitsInt(n *yaml.Node, t reflect.Type) bool {
	var x any
	if err := n.Decode(&x); err != nil {
		return false
	}
	switch x := x.(type) {
	case int:
		if t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uint64 {
			return x >= 0 && (t.Bits() == 64 || uint64(x) < 1<<t.Bits())
		}
		return t.Bits() == 64 || (x >= -(1<<(t.Bits()-1)) && x < 1<<(t.Bits()-1))
	case uint64: // beyond int64
		return t.Kind() == reflect.Uint64 || (t.Kind() == reflect.Uint && math.MaxUint == math.MaxUint64)
	}
	return false
}

// unmarshalerMessage drops the "line N: " a type's own UnmarshalYAML may have put first:
// the line is in the Error already.
func unmarshalerMessage(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if i := strings.Index(rest, ": "); i > 0 {
			if _, err := strconv.Atoi(rest[:i]); err == nil {
				return rest[i+2:]
			}
		}
	}
	return msg
}

// resolve returns what an alias stands for (an alias node's Value is the anchor's name):
// a key may be an alias too.
func resolve(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

// describe says what a node is, for "must be a number (got ...)".
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		v := n.Value
		if len(v) > 40 {
			v = v[:40] + "…"
		}
		return strconv.Quote(v)
	}
	return "something else"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// structFields maps the YAML keys of struct t (yaml tags; the lower-cased field name when
// untagged, as yaml.v3 does; inline structs merged) to their types.
func structFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if slices.Contains(strings.Split(opts, ","), "inline") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range structFields(ft) {
					out[k] = v
				}
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

// suggest returns " (did you mean K?)" for the known key closest to key, or the list of
// known keys when none is close.
func suggest(key string, fields map[string]reflect.Type) string {
	known := make([]string, 0, len(fields))
	for k := range fields {
		known = append(known, k)
	}
	slices.Sort(known)
	best, bestD := "", math.MaxInt
	for _, k := range known {
		if d := distance(strings.ToLower(key), k); d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" && bestD <= max(2, len(key)/3) {
		return " (did you mean " + best + "?)"
	}
	if len(known) == 0 {
		return ""
	}
	return " (known keys here: " + strings.Join(known, ", ") + ")"
}

// distance is the Levenshtein edit distance between a and b, with a transposition of two
// neighbouring letters counted as one edit (optimal string alignment).
func distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	if len(ra) > 64 || len(rb) > 64 {
		return math.MaxInt // not a mistyped key
	}
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}

// Duration is a time.Duration written as "720h" or "30m" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("%q is not a duration like 720h or 30m", n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }
