package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ibcm-project/ibcm/dp/fetch"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

var dpSuite = Suite{
	Name:  "dp",
	Title: "distribution point: one blob over mutual TLS beside nginx at 1 and 8 streams (MB/s, server CPU per GiB); DP memory per slow download; pull-DP sync beside a plain download",
	Run:   runDP,
}

var (
	dpSize     = flag.String("dp-size", "1GiB", "dp suite: size of the blob served (KiB, MiB, GiB suffixes; at least 8MiB)")
	dpRuns     = flag.Int("dp-runs", 5, "dp suite: measured downloads of each server at each stream count, interleaved; the median is reported")
	dpSlow     = flag.Int("dp-slow", 1000, "dp suite: slow downloads held in flight on the DP for its memory row (0 skips the row)")
	dpSlowRate = flag.Int("dp-slow-rate", 4096, "dp suite: bytes per second each slow download reads")
	dpPull     = flag.Bool("dp-pull", true, "dp suite: measure a pull-DP syncing the blob")
)

const (
	dpStreams          = 8
	dpChunk            = 4 << 20 // manifest chunk size (DESIGN.md §8)
	dp1StreamTarget    = 90      // % of nginx's MB/s at 1 stream
	dp8StreamTarget    = 100     // % of nginx's MB/s at 8 streams
	dpCPUTarget        = 110     // % of nginx's CPU-seconds per GiB, at most
	dpSlowTargetKiB    = 64      // DP RSS per concurrent download
	dpSlowWarmup       = 20      // slow downloads opened before the baseline RSS
	dpSlowOpeners      = 16      // slow downloads being opened at once
	dpSlowReadBuf      = 32 << 10
	dpReadBuf          = 256 << 10
	dpDownloadTimeout  = 10 * time.Minute
	dpServeWaitTimeout = 30 * time.Second
)

// dpServer is one side of the comparison: a base URL serving /v1/content/<sha256>, and the
// process whose CPU (with its children: nginx's workers) is its cost.
type dpServer struct {
	name string
	base string
	proc *upProcess
}

// dpBlob is the file both servers serve.
type dpBlob struct {
	sum    string
	size   int64
	chunks []string // SHA-256 of each dpChunk bytes
	path   string
}

func (b dpBlob) url(base string) string { return base + "/v1/content/" + b.sum }

func runDP(ctx context.Context, o Options, progress io.Writer) (Result, error) {
	res := Result{Suite: "dp"}
	size, err := parseSize(*dpSize)
	if err != nil || size < 8<<20 {
		return res, fmt.Errorf("-dp-size %q: want a size of at least 8MiB, like 64MiB or 1GiB", *dpSize)
	}
	if *dpRuns < 1 || *dpSlow < 0 || *dpSlowRate < 512 {
		return res, errors.New("-dp-runs must be at least 1, -dp-slow 0 or more, -dp-slow-rate at least 512")
	}
	nginxBin, err := nginxBinary()
	if err != nil {
		return res, err
	}
	if err := raiseNoFile(uint64(2**dpSlow + 1000)); err != nil {
		return res, err
	}
	tmp, err := os.MkdirTemp("", "ibcm-bench-dp-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil { // nginx's workers read the blob and their config under it
		return res, err
	}

	env, err := startDPEnv(ctx, tmp, nginxBin, size, progress)
	if err != nil {
		return res, err
	}
	defer env.stop()

	rows, notes, err := dpThroughput(ctx, env, progress)
	if err != nil {
		return res, err
	}
	res.Rows, res.Notes = rows, notes

	if *dpSlow > 0 {
		rows, notes, err := dpSlowClients(ctx, env, progress)
		if err != nil {
			return res, fmt.Errorf("slow downloads: %w", err)
		}
		res.Rows = append(res.Rows, rows...)
		res.Notes = append(res.Notes, notes...)
	}
	if *dpPull {
		rows, notes, err := dpPullSync(ctx, env, progress)
		if err != nil {
			return res, fmt.Errorf("pull-DP: %w", err)
		}
		res.Rows = append(res.Rows, rows...)
		res.Notes = append(res.Notes, notes...)
	}
	return res, nil
}

// dpEnv is a site run by `ibcm site up`, a standalone DP and nginx serving the same blob,
// and the admin's identity for the client.
type dpEnv struct {
	tmp, bin, siteDir string
	cfg               *site.Config
	roots             *x509.CertPool
	admin             tls.Certificate
	blob              dpBlob
	dp, nginx         dpServer
	dpCert, dpKey     string
	stops             []func()
}

func (e *dpEnv) stop() {
	for i := len(e.stops) - 1; i >= 0; i-- {
		e.stops[i]()
	}
	e.stops = nil
}

// startDPEnv inits and starts a site, issues a dp site-server certificate, writes the blob
// into a library, and starts `ibcm dp serve` on it and nginx beside it.
func startDPEnv(ctx context.Context, tmp, nginxBin string, size int64, progress io.Writer) (_ *dpEnv, err error) {
	e := &dpEnv{tmp: tmp}
	defer func() {
		if err != nil {
			e.stop()
		}
	}()
	if e.bin, err = ibcmBinary(ctx, tmp, progress); err != nil {
		return nil, err
	}
	e.siteDir = filepath.Join(tmp, "site")
	dpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	if err := initSiteDir(ctx, e.bin, e.siteDir, "--dp-mode", "intranet", "--dp-intranet-addr", dpAddr); err != nil {
		return nil, err
	}
	fmt.Fprintln(progress, "dp: ibcm site up (CA, MP and the origin DP; separate process)")
	up, err := startUp(ctx, e.bin, e.siteDir, filepath.Join(tmp, "site-up.log"), nil)
	if err != nil {
		return nil, err
	}
	e.stops = append(e.stops, func() { _ = up.stop() })
	if e.cfg, err = site.Load(filepath.Join(e.siteDir, site.FileName)); err != nil {
		return nil, err
	}
	if e.roots, err = (&runningSite{cfg: e.cfg}).roots(); err != nil {
		return nil, err
	}
	if e.admin, err = tls.LoadX509KeyPair(e.cfg.Path(site.AdminCert), e.cfg.Path(site.AdminKey)); err != nil {
		return nil, fmt.Errorf("loading the admin identity: %w", err)
	}

	dir := filepath.Join(tmp, "dpb")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if e.dpCert, e.dpKey, err = issueDPCert(ctx, e.bin, e.siteDir, dir, "dpb"); err != nil {
		return nil, err
	}
	lib := filepath.Join(dir, "library")
	fmt.Fprintf(progress, "dp: writing a %s blob of random bytes into the DP's library\n", fmtSize(size))
	if e.blob, err = makeBlob(lib, size); err != nil {
		return nil, err
	}

	fmt.Fprintln(progress, "dp: ibcm dp serve (standalone DP dpb, separate process)")
	// gctrace: the live heap after each GC goes to the DP's log, for the memory row's notes
	if e.dp, err = startDP(ctx, e, dir, "dpb", nil, "GODEBUG=gctrace=1"); err != nil {
		return nil, err
	}
	e.stops = append(e.stops, func() { _ = e.dp.proc.stop() })

	fmt.Fprintf(progress, "dp: nginx (%s), worker_processes %d\n", nginxBin, runtime.GOMAXPROCS(0))
	if e.nginx, err = startNginx(ctx, nginxBin, filepath.Join(tmp, "nginx"), e.dpCert, e.dpKey, e.cfg.Path(e.cfg.CA.RootCert), lib); err != nil {
		return nil, err
	}
	e.stops = append(e.stops, func() { _ = e.nginx.proc.stop() })

	c := e.client(1)
	defer c.CloseIdleConnections()
	for _, s := range []dpServer{e.dp, e.nginx} {
		if err := waitServing(ctx, c, e.blob.url(s.base), s.proc); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// issueDPCert has the site's CA issue a dp site-server certificate named id for 127.0.0.1
// into dir, as an admin would: `ibcm ca issue --profile site-server --role dp`.
func issueDPCert(ctx context.Context, bin, siteDir, dir, id string) (cert, key string, err error) {
	prefix := filepath.Join(dir, id)
	cmd := exec.CommandContext(ctx, bin, "ca", "issue", "--dir", siteDir, "--profile", "site-server", "--role", "dp",
		"--subject", id, "--dns", "127.0.0.1", "--out", prefix)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("ibcm ca issue --role dp --subject %s: %w\n%s", id, err, out)
	}
	return prefix + ".crt", prefix + ".key", nil
}

// dpPullSource is one entry of a DP's pull.sources.
type dpPullSource struct {
	URL      string
	Priority int
}

// startDP writes dir/dp.yaml for a standalone intranet DP named id (its certificate and
// key are dir/id.crt and dir/id.key, its library dir/library) and runs `ibcm dp serve`.
func startDP(ctx context.Context, e *dpEnv, dir, id string, sources []dpPullSource, env ...string) (dpServer, error) {
	addr, err := freeAddr()
	if err != nil {
		return dpServer{}, err
	}
	base := "https://" + addr
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\ndp:\n  id: %s\n  mode: intranet\n  intranet_listen: %s\n  intranet_url: %s\n  priority: 10\n  origin: false\n", id, addr, base)
	fmt.Fprintf(&b, "  tls_cert: %s.crt\n  tls_key: %s.key\n  roots: %s\n  site_code: %s\n  mp_url: %s\n  library: library\n",
		id, id, strconv.Quote(e.cfg.Path(e.cfg.CA.RootCert)), e.cfg.Site.Code, e.cfg.MP.IntranetURL)
	if len(sources) > 0 {
		b.WriteString("  pull:\n    sources:\n")
		for _, s := range sources {
			fmt.Fprintf(&b, "      - {url: %q, priority: %d}\n", s.URL, s.Priority)
		}
		b.WriteString("    bytes_per_second: 0\n")
	}
	conf := filepath.Join(dir, "dp.yaml")
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		return dpServer{}, err
	}
	cmd := exec.Command(e.bin, "dp", "serve", "--config", conf)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	p, err := startProcess(ctx, "ibcm dp serve ("+id+")", cmd, filepath.Join(dir, "dp.log"), "")
	if err != nil {
		return dpServer{}, err
	}
	return dpServer{name: "DP", base: base, proc: p}, nil
}

// nginxBinary finds nginx on PATH or in /usr/sbin.
func nginxBinary() (string, error) {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p, nil
	}
	if fi, err := os.Stat("/usr/sbin/nginx"); err == nil && fi.Mode()&0o111 != 0 {
		return "/usr/sbin/nginx", nil
	}
	return "", errors.New("nginx not found: the dp suite compares the DP with it; run `make bench` as root (it installs nginx) or install the Debian package: apt-get install nginx")
}

// startNginx runs nginx in the foreground (master and GOMAXPROCS workers) on a free
// loopback port with a configuration in dir: the DP's certificate and key, client
// certificates required and verified against the site's root, TLS 1.3 only, and
// /v1/content/<sha256> mapped onto the DP's library layout, so both serve the same file
// at the same path.
func startNginx(ctx context.Context, bin, dir, cert, key, root, lib string) (dpServer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return dpServer{}, err
	}
	addr, err := freeAddr()
	if err != nil {
		return dpServer{}, err
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root root;\n" // the library and the key are the bench's files
	}
	q := strconv.Quote
	conf := fmt.Sprintf(`# written by the ibcm benchmark (dp suite)
%sworker_processes %d;
daemon off;
master_process on;
pid %s;
error_log stderr warn;
worker_rlimit_nofile 8192;
events { worker_connections 4096; }
http {
    access_log off;
    # TLS: no sendfile without kTLS (neither side has it): nginx reads into its output
    # buffers and SSL_writes them, the DP reads and writes through crypto/tls.
    sendfile off;
    keepalive_timeout 75s;
    client_body_temp_path %s;
    proxy_temp_path %s;
    fastcgi_temp_path %s;
    uwsgi_temp_path %s;
    scgi_temp_path %s;
    default_type application/octet-stream;
    server {
        listen %s ssl;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.3;
        ssl_client_certificate %s;
        ssl_verify_client on;
        ssl_verify_depth 4;
        location ~ "^/v1/content/([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{60})$" {
            alias %s/$1/$2/$1$2$3;
        }
        location / { return 404; }
    }
}
`, user, runtime.GOMAXPROCS(0), q(filepath.Join(dir, "nginx.pid")),
		q(filepath.Join(dir, "body")), q(filepath.Join(dir, "proxy")), q(filepath.Join(dir, "fastcgi")), q(filepath.Join(dir, "uwsgi")), q(filepath.Join(dir, "scgi")),
		addr, q(cert), q(key), q(root), lib)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return dpServer{}, err
	}
	cmd := exec.Command(bin, "-p", dir, "-c", path, "-e", "stderr")
	p, err := startProcess(ctx, "nginx", cmd, filepath.Join(dir, "nginx.log"), "")
	if err != nil {
		return dpServer{}, err
	}
	return dpServer{name: "nginx", base: "https://" + addr, proc: p}, nil
}

// waitServing asks HEAD url every 50 ms until it answers 200, for at most 30 s, failing
// early when the server's process exits.
func waitServing(ctx context.Context, c *http.Client, url string, p *upProcess) error {
	deadline := time.Now().Add(dpServeWaitTimeout)
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("HEAD answered %s", resp.Status)
		}
		last = err
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(p.log)
			return fmt.Errorf("%s does not serve %s after %s: %v\n%s", p.name, url, dpServeWaitTimeout, last, tail(log, 2000))
		}
		select {
		case err := <-p.exited:
			p.exited <- err
			p.stopped = true
			log, _ := os.ReadFile(p.log)
			return fmt.Errorf("%s exited: %v\n%s", p.name, err, tail(log, 2000))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond): // polling: neither server says when it serves
		}
	}
}

// client is the client of every row: Go net/http over HTTP/1.1 (no HTTP/2), TLS 1.3, the
// admin's certificate, up to conns connections.
func (e *dpEnv) client(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{e.admin}, RootCAs: e.roots,
			MinVersion: tls.VersionTLS13},
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 only
		MaxConnsPerHost:     conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
		ReadBufferSize:      64 << 10,
	}}
}

// getRange downloads [off, off+n) of url (the whole blob without a Range header when
// whole), checks the status and length, and discards the bytes, or feeds them to h.
func getRange(ctx context.Context, c *http.Client, url string, off, n int64, whole bool, h hash.Hash) (int64, tls.ConnectionState, error) {
	var cs tls.ConnectionState
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, cs, err
	}
	want := http.StatusOK
	if !whole {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
		want = http.StatusPartialContent
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, cs, err
	}
	defer resp.Body.Close()
	if resp.TLS != nil {
		cs = *resp.TLS
	}
	if resp.StatusCode != want {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, cs, fmt.Errorf("GET %s answered %s, want %d: %.200q", req.URL.Path, resp.Status, want, b)
	}
	if resp.ContentLength != n {
		return 0, cs, fmt.Errorf("GET %s: Content-Length %d, want %d", req.URL.Path, resp.ContentLength, n)
	}
	if !whole {
		if cr, wantCR := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-%d/", off, off+n-1); !strings.HasPrefix(cr, wantCR) {
			return 0, cs, fmt.Errorf("GET %s: Content-Range %q, want %s…", req.URL.Path, cr, wantCR)
		}
	}
	buf := make([]byte, dpReadBuf)
	var got int64
	for {
		k, err := resp.Body.Read(buf)
		got += int64(k)
		if h != nil {
			h.Write(buf[:k])
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return got, cs, fmt.Errorf("GET %s after %d bytes: %w", req.URL.Path, got, err)
		}
	}
	if got != n {
		return got, cs, fmt.Errorf("GET %s: %d bytes, want %d", req.URL.Path, got, n)
	}
	return got, cs, nil
}

// dpRun is one timed download of the whole blob and what the server spent on it.
type dpRun struct {
	took time.Duration
	cpu  time.Duration
}

func (r dpRun) mbps(size int64) float64 { return float64(size) / 1e6 / r.took.Seconds() }
func (r dpRun) cpuPerGiB(size int64) float64 {
	return r.cpu.Seconds() * 1000 * float64(1<<30) / float64(size)
}

// download fetches the whole blob from s over streams connections (one whole GET, or
// streams Range GETs of equal parts at once), on fresh connections, and measures the
// wall time and the CPU of the server's processes.
func (e *dpEnv) download(ctx context.Context, s dpServer, streams int, check bool) (dpRun, tls.ConnectionState, error) {
	c := e.client(streams)
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, dpDownloadTimeout)
	defer cancel()
	size := e.blob.size
	cpu0, err := procTreeCPU(s.proc.pid())
	if err != nil {
		return dpRun{}, tls.ConnectionState{}, err
	}
	t0 := time.Now()
	var (
		wg    sync.WaitGroup
		errs  = make([]error, streams)
		cs    tls.ConnectionState
		parts []hash.Hash
	)
	part := (size + int64(streams) - 1) / int64(streams)
	for i := range streams {
		off := int64(i) * part
		n := min(part, size-off)
		var h hash.Hash
		if check {
			h = sha256.New()
			parts = append(parts, h)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var st tls.ConnectionState
			_, st, errs[i] = getRange(ctx, c, e.blob.url(s.base), off, n, streams == 1, h)
			if i == 0 {
				cs = st
			}
		}()
	}
	wg.Wait()
	took := time.Since(t0)
	cpu1, err := procTreeCPU(s.proc.pid())
	if err != nil {
		return dpRun{}, cs, err
	}
	if err := errors.Join(errs...); err != nil {
		return dpRun{}, cs, fmt.Errorf("%s, %d streams: %w", s.name, streams, err)
	}
	if check && streams == 1 {
		if got := hex.EncodeToString(parts[0].Sum(nil)); got != e.blob.sum {
			return dpRun{}, cs, fmt.Errorf("%s served bytes of SHA-256 %s, want %s", s.name, got, e.blob.sum)
		}
	}
	return dpRun{took: took, cpu: cpu1 - cpu0}, cs, nil
}

// dpThroughput downloads the blob from nginx and from the DP at 1 and 8 streams, -dp-runs
// times each, interleaved, after one checked warm-up download each.
func dpThroughput(ctx context.Context, e *dpEnv, progress io.Writer) ([]Row, []string, error) {
	servers := []dpServer{e.nginx, e.dp}
	counts := []int{1, dpStreams}
	size := e.blob.size
	fmt.Fprintf(progress, "dp: warm-up: one whole download from each server, hashed\n")
	var suites [2]string
	for i, s := range servers {
		_, cs, err := e.download(ctx, s, 1, true)
		if err != nil {
			return nil, nil, fmt.Errorf("warm-up: %w", err)
		}
		suites[i] = tls.CipherSuiteName(cs.CipherSuite) + " " + tlsVersionName(cs.Version)
	}
	// runs[server][streams]
	var runs [2][2][]dpRun
	fmt.Fprintf(progress, "dp: %d downloads of %s from each server at 1 and %d streams, interleaved\n", *dpRuns, fmtSize(size), dpStreams)
	for r := range *dpRuns {
		for ci, n := range counts {
			order := []int{0, 1}
			if (r+ci)%2 == 1 { // who goes first alternates
				order = []int{1, 0}
			}
			for _, si := range order {
				run, _, err := e.download(ctx, servers[si], n, false)
				if err != nil {
					return nil, nil, fmt.Errorf("run %d: %w", r, err)
				}
				runs[si][ci] = append(runs[si][ci], run)
			}
		}
	}
	med := func(rs []dpRun, f func(dpRun) float64) float64 {
		var v []float64
		for _, r := range rs {
			v = append(v, f(r))
		}
		return median(v)
	}
	mbps := func(r dpRun) float64 { return r.mbps(size) }
	cpu := func(r dpRun) float64 { return r.cpuPerGiB(size) }
	var rows []Row
	var notes []string
	for ci, n := range counts {
		label := "1 stream"
		target := float64(dp1StreamTarget)
		if n > 1 {
			label = fmt.Sprintf("%d streams", n)
			target = dp8StreamTarget
		}
		ng, dp := med(runs[0][ci], mbps), med(runs[1][ci], mbps)
		rows = append(rows,
			Row{Name: label + ", nginx (reference)", Value: ng, Unit: "MB/s", Count: *dpRuns},
			Row{Name: label + ", DP", Value: dp, Unit: "MB/s", Count: *dpRuns},
			targetRow(label+", DP / nginx", "%", 100*dp/ng, *dpRuns, target, false))
		notes = append(notes, fmt.Sprintf("%s: MB/s per run nginx %s; DP %s", label, fmtRates(perRun(runs[0][ci], mbps)), fmtRates(perRun(runs[1][ci], mbps))))
	}
	for ci, n := range counts {
		label := "1 stream"
		if n > 1 {
			label = fmt.Sprintf("%d streams", n)
		}
		ng, dp := med(runs[0][ci], cpu), med(runs[1][ci], cpu)
		rows = append(rows,
			Row{Name: "server CPU per GiB, " + label + ", nginx (reference)", Value: ng, Unit: "ms/GiB", Count: *dpRuns},
			Row{Name: "server CPU per GiB, " + label + ", DP", Value: dp, Unit: "ms/GiB", Count: *dpRuns},
			targetRow("server CPU per GiB, "+label+", DP / nginx", "%", 100*dp/ng, *dpRuns, dpCPUTarget, true))
		notes = append(notes, fmt.Sprintf("%s: server CPU ms/GiB per run nginx %s; DP %s", label, fmtRates(perRun(runs[0][ci], cpu)), fmtRates(perRun(runs[1][ci], cpu))))
	}
	notes = append([]string{
		fmt.Sprintf("blob: %s (%d bytes) of random bytes at %s (the DP's library layout), in the page cache; MB/s = 10^6 bytes/s; each value is the median of %d runs, nginx and the DP alternating (who goes first alternates too), after one whole download from each whose SHA-256 was checked",
			fmtSize(size), size, "<library>/ab/cd/<sha256>", *dpRuns),
		fmt.Sprintf("client (the same for both, in the bench process): Go net/http, HTTP/1.1, TLS 1.3 (negotiated: nginx %s, DP %s), the site admin's client certificate, fresh connections each run, bytes read into a 256 KiB buffer and dropped; 1 stream = one GET of the whole blob (200); %d streams = %d Range GETs of 1/%d each on %d connections at once (206)",
			suites[0], suites[1], dpStreams, dpStreams, dpStreams, dpStreams),
		fmt.Sprintf("nginx: the Debian package, %d worker processes (= GOMAXPROCS), the DP's certificate and key, ssl_verify_client on with the site root, TLS 1.3 only, sendfile off: over TLS nginx could only sendfile through kTLS, which the DP (crypto/tls) cannot use either, so both read the file and encrypt in user space; no access log, no revocation check (the DP checks each client against its revocation feed)",
			runtime.GOMAXPROCS(0)),
		"DP: `ibcm dp serve` as its own process (standalone, site-server certificate of role dp issued by `ibcm ca issue`, registered with the site's MP); server CPU = utime + stime from /proc/PID/stat of the server's processes (nginx: master + workers; DP: its one process), 10 ms ticks, over each download",
		"machine: client and server share the same cores, so a server that spends less CPU leaves more to the client's decryption",
	}, notes...)
	return rows, notes, nil
}

func perRun(rs []dpRun, f func(dpRun) float64) []float64 {
	var v []float64
	for _, r := range rs {
		v = append(v, f(r))
	}
	return v
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func tlsVersionName(v uint16) string {
	if v == tls.VersionTLS13 {
		return "TLS 1.3"
	}
	return fmt.Sprintf("TLS 0x%04x", v)
}

// slowDownload is a download reading a few KiB a second.
type slowDownload struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// dpSlowClients holds *dpSlow downloads in flight on the DP, each reading -dp-slow-rate
// bytes a second, and measures the DP's RSS per download.
func dpSlowClients(ctx context.Context, e *dpEnv, progress io.Writer) ([]Row, []string, error) {
	pid := e.dp.proc.pid()
	// Small receive buffers: at a few KiB/s what the kernels buffer is not the DP's memory,
	// and 1,000 autotuned loopback buffers would be gigabytes.
	d := &net.Dialer{Timeout: 30 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
		})
		return errors.Join(err, serr)
	}}
	c := e.client(0)
	c.Transport.(*http.Transport).DialContext = d.DialContext
	c.Transport.(*http.Transport).MaxIdleConnsPerHost = 0
	c.Transport.(*http.Transport).ReadBufferSize = 4 << 10
	defer c.CloseIdleConnections()

	var (
		mu      sync.Mutex
		live    []*slowDownload
		lost    atomic.Int64
		lostErr atomic.Value
		read    atomic.Int64
	)
	defer func() {
		mu.Lock()
		all := live
		live = nil
		mu.Unlock()
		for _, s := range all {
			s.cancel()
		}
		for _, s := range all {
			<-s.done
		}
	}()
	held := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(live)
	}
	url := e.blob.url(e.dp.base)
	interval := time.Duration(float64(time.Second) * dpSlowReadBuf / float64(*dpSlowRate))
	if interval > 2*time.Second {
		interval = 2 * time.Second
	}
	chunk := int(float64(*dpSlowRate) * interval.Seconds())
	open := func(n int) error {
		var next atomic.Int64
		var wg sync.WaitGroup
		errc := make(chan error, dpSlowOpeners)
		for range dpSlowOpeners {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					if i := next.Add(1); i > int64(n) || ctx.Err() != nil {
						return
					}
					sctx, cancel := context.WithCancel(context.Background())
					// a server that stops accepting (a connection limit) must not hang the bench
					opening := time.AfterFunc(dpServeWaitTimeout, cancel)
					req, err := http.NewRequestWithContext(sctx, http.MethodGet, url, nil)
					if err != nil {
						cancel()
						errc <- err
						return
					}
					resp, err := c.Do(req)
					if err == nil && resp.StatusCode != http.StatusOK {
						resp.Body.Close()
						err = fmt.Errorf("GET answered %s", resp.Status)
					}
					if err != nil {
						cancel()
						errc <- fmt.Errorf("opening download %d (none is opened after %s): %w", held()+1, dpServeWaitTimeout, err)
						return
					}
					buf := make([]byte, chunk)
					if _, err := io.ReadFull(resp.Body, buf[:1]); err != nil { // in flight
						cancel()
						resp.Body.Close()
						errc <- fmt.Errorf("first byte: %w", err)
						return
					}
					if !opening.Stop() {
						cancel()
						resp.Body.Close()
						errc <- fmt.Errorf("download %d was not in flight within %s", held()+1, dpServeWaitTimeout)
						return
					}
					s := &slowDownload{cancel: cancel, done: make(chan struct{})}
					mu.Lock()
					live = append(live, s)
					mu.Unlock()
					go func() {
						defer close(s.done)
						defer resp.Body.Close()
						t := time.NewTimer(time.Duration(rand.Int64N(int64(interval))))
						defer t.Stop()
						for {
							select {
							case <-sctx.Done():
								return
							case <-t.C:
							}
							k, err := io.ReadFull(resp.Body, buf)
							read.Add(int64(k))
							if err != nil {
								if sctx.Err() == nil {
									lost.Add(1)
									lostErr.CompareAndSwap(nil, err)
								}
								return
							}
							t.Reset(interval)
						}
					}()
				}
			}()
		}
		wg.Wait()
		close(errc)
		if err := <-errc; err != nil {
			return err
		}
		return ctx.Err()
	}

	fmt.Fprintf(progress, "dp: warm-up: %d slow downloads\n", dpSlowWarmup)
	if err := open(dpSlowWarmup); err != nil {
		return nil, nil, err
	}
	before, err := stableRSS(ctx, pid)
	if err != nil {
		return nil, nil, err
	}
	gcBefore := lastGC(e.dp.proc.log)
	n := *dpSlow
	fmt.Fprintf(progress, "dp: opening %d slow downloads, %d bytes/s each (DP RSS %.1f MiB)\n", n, *dpSlowRate, float64(before)/(1<<20))
	t0 := time.Now()
	if err := open(n); err != nil {
		return nil, nil, err
	}
	openTime := time.Since(t0)
	after, err := stableRSS(ctx, pid)
	if err != nil {
		return nil, nil, err
	}
	gcAfter := lastGC(e.dp.proc.log)
	threads, _ := procStatus(pid, "Threads")
	anon, _ := procStatus(pid, "RssAnon")
	if l := lost.Load(); l > 0 {
		return nil, nil, fmt.Errorf("%d slow downloads ended while held, the first with: %v", l, lostErr.Load())
	}
	total := held()
	heldFor := time.Since(t0)
	perKiB := float64(after-before) / float64(n) / 1024
	fmt.Fprintf(progress, "dp: %d slow downloads in flight (DP RSS %.1f MiB); closing them\n", total, float64(after)/(1<<20))
	rows := []Row{targetRow(fmt.Sprintf("DP RSS per concurrent slow download (%s)", thousands(float64(n))), "KiB", perKiB, n, dpSlowTargetKiB, true)}
	notes := []string{
		fmt.Sprintf("slow downloads: each a GET of the whole blob from the DP on its own connection (the admin's certificate, socket receive buffer 16 KiB), reading %d bytes every %s (%d bytes/s) into a %d-byte buffer; %d opened in %s (%d at once) after %d warm-up ones, all in flight (first byte read, none ended) for %s",
			chunk, interval, *dpSlowRate, chunk, n, openTime.Round(time.Millisecond), dpSlowOpeners, dpSlowWarmup, heldFor.Round(time.Millisecond)),
		fmt.Sprintf("slow downloads: DP VmRSS %.1f MiB after %d warm-up downloads -> %.1f MiB with %d more (RssAnon %.1f MiB; stable: two reads 500 ms apart within 1%%); %d OS threads; %.1f MiB read by all clients",
			float64(before)/(1<<20), dpSlowWarmup, float64(after)/(1<<20), n, float64(anon)/1024, threads, float64(read.Load())/(1<<20)),
	}
	if gcBefore.ok && gcAfter.ok && gcAfter.n > gcBefore.n {
		notes = append(notes, fmt.Sprintf("slow downloads: the DP's Go runtime (GODEBUG=gctrace=1, last GC before each RSS read: #%d, #%d): live heap after marking %d -> %d MB, goroutine stacks %d -> %d MB, heap goal %d MB: %.0f KiB of live heap + %.0f KiB of stack per download; RSS above that is the collector's headroom (GOGC) and memory not yet returned",
			gcBefore.n, gcAfter.n, gcBefore.live, gcAfter.live, gcBefore.stacks, gcAfter.stacks, gcAfter.goal,
			float64(gcAfter.live-gcBefore.live)*1024/float64(n), float64(gcAfter.stacks-gcBefore.stacks)*1024/float64(n)))
	}
	return rows, notes, nil
}

// dpPullSync has a second standalone DP pull the blob from the first (pull.sources = the
// first's URL) after `ibcm content add` and `ibcm content distribute --dp` of a package
// holding it, and times it beside a plain download of the same bytes by the bench's client.
func dpPullSync(ctx context.Context, e *dpEnv, progress io.Writer) ([]Row, []string, error) {
	size := e.blob.size
	dir := filepath.Join(e.tmp, "dpp")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	if _, _, err := issueDPCert(ctx, e.bin, e.siteDir, dir, "dpp"); err != nil {
		return nil, nil, err
	}
	fmt.Fprintln(progress, "dp: ibcm dp serve (pull-DP dpp, pull.sources = dpb, separate process)")
	dpp, err := startDP(ctx, e, dir, "dpp", []dpPullSource{{URL: e.dp.base, Priority: 1}})
	if err != nil {
		return nil, nil, err
	}
	defer dpp.proc.stop()
	for _, id := range []string{"dpb", "dpp"} {
		if err := e.waitRegistered(ctx, id, dpp.proc); err != nil {
			return nil, nil, err
		}
	}

	// The package: the blob under one file name (a hard link, no copy), uploaded to the
	// site's origin DP, signed by the CA, registered with the MP.
	pkg := filepath.Join(e.tmp, "pkg")
	if err := os.MkdirAll(pkg, 0o755); err != nil {
		return nil, nil, err
	}
	file := filepath.Join(pkg, "payload.bin")
	if err := os.Link(e.blob.path, file); err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(progress, "dp: ibcm content add bench-payload --version 1 (%s, 4 MiB chunks; uploaded to the site's origin DP)\n", fmtSize(size))
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, e.bin, "content", "add", "bench-payload", "--version", "1", "--chunk-size", "4MiB",
		"--dir", e.siteDir, "--json", file).Output()
	if err != nil {
		return nil, nil, fmt.Errorf("ibcm content add: %w\n%s", err, exitStderr(err))
	}
	addTime := time.Since(t0)
	var added struct {
		Uploaded int64  `json:"uploaded"`
		DP       string `json:"dp"`
	}
	if err := json.Unmarshal(out, &added); err != nil {
		return nil, nil, fmt.Errorf("ibcm content add --json: %w: %.300q", err, out)
	}

	// A plain download of the same bytes by the bench's client, just before.
	fmt.Fprintln(progress, "dp: a plain download of the blob from dpb, then the pull")
	plain, _, err := e.download(ctx, e.dp, 1, false)
	if err != nil {
		return nil, nil, err
	}

	final := filepath.Join(dir, "library", e.blob.sum[:2], e.blob.sum[2:4], e.blob.sum)
	srcCPU0, _ := procTreeCPU(e.dp.proc.pid())
	pullCPU0, _ := procTreeCPU(dpp.proc.pid())
	t0 = time.Now()
	if out, err := exec.CommandContext(ctx, e.bin, "content", "distribute", "bench-payload", "--version", "1",
		"--dp", "dpp", "--dir", e.siteDir).CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("ibcm content distribute: %w\n%s", err, out)
	}
	var partSeen, pullCPUPart time.Duration
	deadline := t0.Add(dpDownloadTimeout)
	for {
		if _, err := os.Stat(final); err == nil {
			break
		}
		if partSeen == 0 {
			if _, err := os.Stat(final + ".part"); err == nil {
				partSeen = time.Since(t0)
				pullCPUPart, _ = procTreeCPU(dpp.proc.pid())
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(dpp.proc.log)
			return nil, nil, fmt.Errorf("the pull-DP has no %s after %s\n%s", final, dpDownloadTimeout, tail(log, 2000))
		}
		select {
		case err := <-dpp.proc.exited:
			dpp.proc.exited <- err
			dpp.proc.stopped = true
			log, _ := os.ReadFile(dpp.proc.log)
			return nil, nil, fmt.Errorf("the pull-DP exited: %v\n%s", err, tail(log, 2000))
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(10 * time.Millisecond): // polling the library: the blob appears by rename
		}
	}
	pull := time.Since(t0)
	srcCPU1, _ := procTreeCPU(e.dp.proc.pid())
	pullCPU1, _ := procTreeCPU(dpp.proc.pid())
	if sum, err := fileSHA256(final); err != nil || sum != e.blob.sum {
		return nil, nil, fmt.Errorf("the pull-DP's blob: SHA-256 %s (%v), want %s", sum, err, e.blob.sum)
	}
	state, err := e.waitDPState(ctx, "dpp", "bench-payload", "1")
	if err != nil {
		return nil, nil, err
	}

	// The same download by dp/fetch in the bench process, with the bench's client: the
	// pull's download code without the puller and its process.
	fmt.Fprintln(progress, "dp: fetch.Get of the blob from dpb in the bench process")
	fdst := filepath.Join(e.tmp, "fetch", e.blob.sum)
	fb := fetch.Blob{SHA256: e.blob.sum, Size: size, ChunkSize: dpChunk, Chunks: e.blob.chunks}
	fc := e.client(1)
	fcpu0 := selfCPU()
	ft0 := time.Now()
	fres, err := fetch.Get(ctx, fb, []fetch.Source{{Name: "dpb", URL: e.dp.base}}, fdst, fetch.Options{Client: fc})
	ftook := time.Since(ft0)
	fcpu := selfCPU() - fcpu0
	fc.CloseIdleConnections()
	if err != nil {
		return nil, nil, fmt.Errorf("fetch.Get from dpb: %w", err)
	}
	if fres.Received != size {
		return nil, nil, fmt.Errorf("fetch.Get from dpb received %d bytes, want %d", fres.Received, size)
	}
	_ = os.Remove(fdst)

	// What the disk allows: the pull stores what it receives, the plain download does not.
	diskTook, err := copySync(e.blob.path, filepath.Join(e.tmp, "disk-copy"))
	if err != nil {
		return nil, nil, err
	}

	if partSeen == 0 { // the .part came and went between two looks: no transfer time
		return nil, nil, errors.New("the pull-DP's .part file was never seen (polled every 10 ms)")
	}
	endMBps := float64(size) / 1e6 / pull.Seconds()
	pullMBps := float64(size) / 1e6 / (pull - partSeen).Seconds()
	rows := []Row{
		{Name: "plain download of the blob from the DP, 1 stream", Value: plain.mbps(size), Unit: "MB/s", Count: 1},
		{Name: "pull-DP sync of the blob (.part created -> blob in its library)", Value: pullMBps, Unit: "MB/s", Count: 1},
		{Name: "pull-DP sync / plain download", Value: 100 * pullMBps / plain.mbps(size), Unit: "%", Count: 1},
		{Name: "pull-DP sync end to end (distribute -> blob, with start jitter)", Value: endMBps, Unit: "MB/s", Count: 1},
		{Name: "fetch.Get of the blob in the bench process (pull's download code)", Value: float64(size) / 1e6 / ftook.Seconds(), Unit: "MB/s", Count: 1},
		{Name: "disk: the blob copied to a new file, 1 MiB writes + fsync", Value: float64(size) / 1e6 / diskTook.Seconds(), Unit: "MB/s", Count: 1},
	}
	transfer := fmt.Sprintf("its .part file first seen %s after the distribute command started (the puller's start jitter, random 0-5 s by design, and the assignment reaching dpp; dpp's CPU until then %.0f ms)",
		partSeen.Round(time.Millisecond), (pullCPUPart-pullCPU0).Seconds()*1000)
	notes := []string{
		fmt.Sprintf("pull-DP: a second standalone `ibcm dp serve` (dpp, pull.sources = [dpb's URL], no rate limit) pulls with dp/pull + dp/fetch (chunks verified as they arrive, whole-file hash, written to disk, fsync, rename; the blob's hash checked here after); the package: `ibcm content add bench-payload --version 1 --chunk-size 4MiB` of the blob (%d chunks; %s, %d bytes uploaded to the site's origin DP %s), then `ibcm content distribute bench-payload --version 1 --dp dpp`; %s; the transfer row is timed from then to the blob's rename (polled every 10 ms); dpp then reported %s",
			len(e.blob.chunks), addTime.Round(time.Millisecond), added.Uploaded, added.DP, transfer, state),
		fmt.Sprintf("pull-DP: CPU over the pull: dpb (source) %.0f ms/GiB, dpp (pull-DP) %.0f ms/GiB; the plain download (the bench's client, 1 GET, bytes dropped, nothing written) just before it: %s",
			gibMS(srcCPU1-srcCPU0, size), gibMS(pullCPU1-pullCPU0, size), plain.took.Round(time.Millisecond)),
		fmt.Sprintf("fetch.Get: dp/fetch called in the bench process with the bench's client (Range/If-Range, each 4 MiB chunk verified as it arrives, whole-file hash, written to a file in the temp directory, fsync, rename) right after the pull: %s, the bench process's CPU %.0f ms/GiB (client TLS included)",
			ftook.Round(time.Millisecond), gibMS(fcpu, size)),
	}
	return rows, notes, nil
}

// copySync copies src (in the page cache) to a new file dst in 1 MiB writes, fsyncs it,
// removes it, and returns how long the copy and the fsync took.
func copySync(src, dst string) (time.Duration, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	defer os.Remove(dst)
	defer out.Close()
	t0 := time.Now()
	if _, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{in}, make([]byte, 1<<20)); err != nil {
		return 0, fmt.Errorf("copying the blob: %w", err)
	}
	if err := out.Sync(); err != nil {
		return 0, fmt.Errorf("syncing the copy: %w", err)
	}
	return time.Since(t0), nil
}

func gibMS(d time.Duration, size int64) float64 {
	return dpRun{cpu: d}.cpuPerGiB(size)
}

// exitStderr is the standard error an exec.ExitError kept.
func exitStderr(err error) []byte {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return tail(ee.Stderr, 2000)
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// mpGet GETs path of the MP's admin API with the site admin's certificate into out.
func (e *dpEnv) mpGet(ctx context.Context, path string, out any) error {
	c := e.client(1)
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.cfg.MP.IntranetURL+path, nil)
	if err != nil {
		return err
	}
	return do(c, req, http.StatusOK, out)
}

// waitRegistered waits until the MP lists the DP id online, for at most 30 s.
func (e *dpEnv) waitRegistered(ctx context.Context, id string, p *upProcess) error {
	deadline := time.Now().Add(dpServeWaitTimeout)
	for {
		var dps []wire.DPInfo
		err := e.mpGet(ctx, "/v1/admin/dps", &dps)
		if err == nil {
			for _, d := range dps {
				if d.ID == id && d.Online {
					return nil
				}
			}
			err = fmt.Errorf("not listed online (%d DPs listed)", len(dps))
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(p.log)
			return fmt.Errorf("DP %s is not registered with the MP after %s: %v\n%s", id, dpServeWaitTimeout, err, tail(log, 2000))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond): // polling the MP's list of DPs
		}
	}
}

// waitDPState waits (at most 30 s) until the MP has the DP's report of a package version
// that is not pending or syncing, and describes it.
func (e *dpEnv) waitDPState(ctx context.Context, id, name, version string) (string, error) {
	deadline := time.Now().Add(dpServeWaitTimeout)
	last := "no report"
	for {
		var dps []wire.DPInfo
		if err := e.mpGet(ctx, "/v1/admin/dps", &dps); err != nil {
			return "", err
		}
		for _, d := range dps {
			if d.ID != id {
				continue
			}
			for _, p := range d.Packages {
				if p.Name == name && p.Version == version {
					last = p.State
					if p.Error != "" {
						last += " (" + p.Error + ")"
					}
					if p.State == wire.DPReady || p.State == wire.DPFailed {
						return last + " to the MP", nil
					}
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("DP %s: %s %s is still %s after %s", id, name, version, last, dpServeWaitTimeout)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// gcLine is one line of a Go process's GODEBUG=gctrace=1 output (sizes in MB).
type gcLine struct {
	ok                 bool
	n                  int
	live, goal, stacks int
}

// lastGC reads the last gctrace line in a log: "gc N @…: … A->B->C MB, D MB goal, E MB stacks, …".
func lastGC(path string) gcLine {
	b, err := os.ReadFile(path)
	if err != nil {
		return gcLine{}
	}
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if !strings.HasPrefix(l, "gc ") {
			continue
		}
		var g gcLine
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		g.n, _ = strconv.Atoi(f[1])
		for _, part := range strings.Split(l, ", ") {
			part = strings.TrimSpace(part)
			switch {
			case strings.HasSuffix(part, " MB goal"):
				g.goal, _ = strconv.Atoi(strings.TrimSuffix(part, " MB goal"))
			case strings.HasSuffix(part, " MB stacks"):
				g.stacks, _ = strconv.Atoi(strings.TrimSuffix(part, " MB stacks"))
			case strings.HasSuffix(part, " MB") && strings.Contains(part, "->"):
				arrows := strings.Split(strings.TrimSuffix(part, " MB"), "->")
				var err error
				if g.live, err = strconv.Atoi(arrows[len(arrows)-1]); err == nil {
					g.ok = true
				}
			}
		}
		return g
	}
	return gcLine{}
}

// makeBlob writes size random bytes into lib at <ab>/<cd>/<sha256> (the DP's library
// layout: written under a temporary name, synced, then renamed) and returns its hashes.
func makeBlob(lib string, size int64) (dpBlob, error) {
	if err := os.MkdirAll(lib, 0o755); err != nil {
		return dpBlob{}, err
	}
	f, err := os.CreateTemp(lib, "blob-*.part")
	if err != nil {
		return dpBlob{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	var seed [32]byte
	for i := range 4 {
		binary.LittleEndian.PutUint64(seed[i*8:], rand.Uint64())
	}
	src := rand.NewChaCha8(seed)
	whole := sha256.New()
	b := dpBlob{size: size}
	buf := make([]byte, 1<<20)
	var chunk hash.Hash
	for off := int64(0); off < size; {
		if off%dpChunk == 0 {
			chunk = sha256.New()
		}
		n := min(int64(len(buf)), size-off, dpChunk-off%dpChunk)
		p := buf[:n]
		_, _ = src.Read(p)
		whole.Write(p)
		chunk.Write(p)
		if _, err := f.Write(p); err != nil {
			return dpBlob{}, err
		}
		off += n
		if off%dpChunk == 0 || off == size {
			b.chunks = append(b.chunks, hex.EncodeToString(chunk.Sum(nil)))
		}
	}
	if err := f.Sync(); err != nil {
		return dpBlob{}, err
	}
	if err := f.Chmod(0o644); err != nil {
		return dpBlob{}, err
	}
	b.sum = hex.EncodeToString(whole.Sum(nil))
	b.path = filepath.Join(lib, b.sum[:2], b.sum[2:4], b.sum)
	if err := os.MkdirAll(filepath.Dir(b.path), 0o755); err != nil {
		return dpBlob{}, err
	}
	if err := os.Rename(f.Name(), b.path); err != nil {
		return dpBlob{}, err
	}
	return b, nil
}

// procTreeCPU is the user + system CPU time of a process and its live children.
func procTreeCPU(pid int) (time.Duration, error) {
	total, err := procCPU(pid)
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0, err
	}
	for _, f := range strings.Fields(string(b)) {
		child, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		if t, err := procCPU(child); err == nil { // a child that just exited is not counted
			total += t
		}
	}
	return total, nil
}

// raiseNoFile raises this process's soft limit of open files to need (at most the hard
// limit), so the slow clients' connections fit; the servers it starts inherit it.
func raiseNoFile(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= need {
		return nil
	}
	if lim.Max < need {
		return fmt.Errorf("-dp-slow %d needs %d file descriptors, the hard limit (ulimit -Hn) is %d: raise it or lower -dp-slow", *dpSlow, need, lim.Max)
	}
	lim.Cur = need
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// parseSize reads 1GiB, 64MiB, 512KiB or a number of bytes.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<40)/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

func fmtSize(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}
