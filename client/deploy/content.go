package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/dp/fetch"
	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// MaxDPs bounds the DPs one locate answer may name.
const MaxDPs = 32

// CheckDPs keeps the DP URLs a locate answer gave that are https URLs with a host, in
// order, and names the others in the error.
func CheckDPs(urls []string) ([]string, error) {
	var out []string
	var bad []string
	for _, s := range urls {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" ||
			u.Fragment != "" || u.Opaque != "" || u.ForceQuery || strings.ContainsAny(u.Host, "/?#@") {
			bad = append(bad, fmt.Sprintf("%q", s))
			continue
		}
		out = append(out, "https://"+u.Host)
		if len(out) == MaxDPs {
			break
		}
	}
	if len(out) == 0 {
		if len(bad) > 0 {
			return nil, fmt.Errorf("no usable DP URL (refused %s)", strings.Join(bad, ", "))
		}
		return nil, errors.New("the MP names no DP for this location")
	}
	return out, nil
}

// FetchManifest asks each DP in turn for the signed manifest of d and returns the first
// that verifies against trust and d's pin, with the DP that served it. The error names
// what each DP did wrong.
func FetchManifest(ctx context.Context, c *http.Client, dps []string, d wire.Deployment, trust manifest.Trust) (*wire.Manifest, string, error) {
	var errs []string
	for _, dp := range dps {
		m, err := fetchManifest(ctx, c, dp, d, trust)
		if err == nil {
			return m, dp, nil
		}
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		errs = append(errs, dp+": "+err.Error())
	}
	return nil, "", fmt.Errorf("no DP served a valid manifest of %s %s: %s", d.Package, d.Version, strings.Join(errs, "; "))
}

func fetchManifest(ctx context.Context, c *http.Client, dp string, d wire.Deployment, trust manifest.Trust) (*wire.Manifest, error) {
	if !manifest.ValidName(d.Package) || !manifest.ValidVersion(d.Version) || !manifest.ValidHash(d.ManifestSHA256) {
		return nil, fmt.Errorf("deployment %s: bad package %q, version %q or manifest hash", d.ID, d.Package, d.Version)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, dp+"/v1/manifests/"+url.PathEscape(d.Package)+"/"+url.PathEscape(d.Version), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e wire.Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
			return nil, fmt.Errorf("%s: %s (%s)", resp.Status, e.Error.Message, e.Error.Code)
		}
		return nil, errors.New(resp.Status)
	}
	sm, _, err := manifest.ReadSigned(resp.Body)
	if err != nil {
		return nil, err
	}
	m, err := manifest.Verify(sm, trust, d.ManifestSHA256)
	if err != nil {
		return nil, err
	}
	if m.Name != d.Package || m.Version != d.Version {
		return nil, fmt.Errorf("the manifest is of %s %s, not %s %s", m.Name, m.Version, d.Package, d.Version)
	}
	return m, nil
}

// Progress is told how many bytes of the whole package are in the cache.
type Progress func(have, total int64)

// DownloadOptions say how Download fetches.
type DownloadOptions struct {
	Client       *http.Client
	StallTimeout time.Duration
	Progress     Progress
}

// Download makes the cache hold every blob of m, from the DPs in order (fetch.Get: resume,
// chunk verification, the next DP after a bad or stalled one). It returns the DP that sent
// the most bytes (or the first, when everything was cached).
func Download(ctx context.Context, cache string, m *wire.Manifest, dps []string, o DownloadOptions) (string, error) {
	total := PackageSize(m)
	var done int64
	sources := make([]fetch.Source, len(dps))
	for i, u := range dps {
		sources[i] = fetch.Source{Name: u, URL: u}
	}
	sent := map[string]int64{}
	report := func(have int64) {
		if o.Progress != nil {
			o.Progress(have, total)
		}
	}
	report(0)
	for _, f := range uniqueBlobs(m) {
		switch {
		case haveBlob(cache, f):
		case f.Size == 0:
			if err := emptyBlob(cache, f); err != nil {
				return "", err
			}
		default:
			base := done
			res, err := fetch.Get(ctx, fetch.BlobOf(m, f), sources, BlobPath(cache, f.SHA256), fetch.Options{
				Client: o.Client, StallTimeout: o.StallTimeout,
				Progress: func(have, _ int64) { report(base + have) },
			})
			if err != nil {
				return "", fmt.Errorf("%s (%s): %w", f.Path, f.SHA256[:12], err)
			}
			sent[res.Source] += res.Received + 1 // +1: a DP that resumed nothing still counts
		}
		done += f.Size
		report(done)
	}
	best, most := "", int64(-1)
	for _, u := range dps {
		if sent[u] > most {
			best, most = u, sent[u]
		}
	}
	return best, nil
}
