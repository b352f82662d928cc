package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/ibcm-project/ibcm/internal/peertest"
)

// The web console's tests drive Debian's Chromium, headless, through the DevTools protocol
// (chromedp). The browser trusts the site's root the way a user's does: through the NSS
// database in its HOME (certutil), never with --ignore-certificate-errors; the site's host
// names resolve to 127.0.0.1 inside the browser (--host-resolver-rules), so the console's
// URL is the one `ibcm console login` prints.

// Browser window and step limits.
const (
	browserWidth, browserHeight = 1280, 800
	browserStep                 = 20 * time.Second // one wait, click or read
)

// browser is one headless Chromium of a test, on a HOME of its own, with one tab.
type browser struct {
	t   *testing.T
	ctx context.Context // the tab; it ends with the test or at the browser's time limit

	mu      *sync.Mutex   // guards console and stderr
	console []string      // what the tab's pages wrote to their consoles, for failure reports
	stderr  *bytes.Buffer // what Chromium printed (shared by the tabs of one Chromium)
}

// newBrowser starts Chromium for the test, trusting the CA roots (PEM files) and resolving
// hosts to 127.0.0.1; it is stopped when the test ends, or after limit.
func newBrowser(t *testing.T, limit time.Duration, roots []string, hosts ...string) *browser {
	t.Helper()
	chromium := peertest.Need(t, "chromium")
	certutil := peertest.Need(t, "certutil")

	home := t.TempDir()
	nssdb := filepath.Join(home, ".pki", "nssdb")
	if err := os.MkdirAll(nssdb, 0o700); err != nil {
		t.Fatal(err)
	}
	nss := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(certutil, append([]string{"-d", "sql:" + nssdb}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("certutil %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	nss("-N", "--empty-password")
	for i, root := range roots {
		nss("-A", "-t", "C,,", "-n", fmt.Sprintf("ibcm test root %d", i), "-i", root)
	}

	b := &browser{t: t, mu: new(sync.Mutex), stderr: new(bytes.Buffer)}
	rules := make([]string, 0, len(hosts))
	for _, h := range hosts {
		rules = append(rules, "MAP "+h+" 127.0.0.1")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.WindowSize(browserWidth, browserHeight),
		chromedp.UserDataDir(filepath.Join(home, "profile")),
		chromedp.Env("HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "XDG_CACHE_HOME="+filepath.Join(home, ".cache")),
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("host-resolver-rules", strings.Join(rules, ", ")),
		chromedp.CombinedOutput(lockedWriter{b.mu, b.stderr}),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium's sandbox refuses to run as root
	}
	limitCtx, cancelLimit := context.WithTimeout(context.Background(), limit)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(limitCtx, opts...)
	tab, cancelTab := chromedp.NewContext(allocCtx)
	b.ctx = tab
	t.Cleanup(func() {
		if t.Failed() {
			b.report()
		}
		cancelTab()
		cancelAlloc()
		cancelLimit()
	})
	// The first call starts the browser.
	b.start()
	return b
}

// start opens the tab at the exact viewport and collects what its pages write to their
// consoles.
func (b *browser) start() {
	b.t.Helper()
	// The window's viewport is smaller than the window (headless keeps room for its
	// frame): the page gets exactly 1280×800.
	if err := chromedp.Do(b.ctx, chromedp.EmulateViewport(browserWidth, browserHeight)); err != nil {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.t.Fatalf("starting chromium: %v\n%s", err, b.stderr.String())
	}
	messages := chromedp.Console(b.ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.console = append(b.console, m.String())
			b.mu.Unlock()
		}
	}()
}

// private opens a tab in a new browser context of the same Chromium: its own cookies, as
// another person's browser would have. It closes when the test ends.
func (b *browser) private() *browser {
	b.t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext())
	p := &browser{t: b.t, ctx: ctx, mu: b.mu, stderr: b.stderr}
	b.t.Cleanup(func() {
		if b.t.Failed() {
			p.report()
		}
		cancel()
	})
	p.start()
	return p
}

// lockedWriter writes to a buffer others read under the same mutex.
type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// report logs where the tab is, what its page says and what it wrote to its console.
func (b *browser) report() {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	if len(text) > 3000 {
		text = text[:3000] + " …"
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.t.Logf("browser at %s; the page says:\n%s\nconsole:\n%s", loc, text, strings.Join(b.console, "\n"))
	var lines []string
	for _, l := range strings.Split(b.stderr.String(), "\n") {
		if l != "" && !strings.Contains(l, "dbus") { // no D-Bus in a test: noise
			lines = append(lines, l)
		}
	}
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	if len(lines) > 0 {
		b.t.Logf("chromium printed:\n%s", strings.Join(lines, "\n"))
	}
}

// do runs actions within one step's limit and fails the test with what when one fails.
func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserStep)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// runAction runs one action that returns a value within one step's limit.
func runAction[T any](b *browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserStep)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
	return v
}

// open navigates to url and waits for its load event.
func (b *browser) open(url string) {
	b.t.Helper()
	b.do("open "+url, chromedp.Navigate(url))
}

// openStatus navigates to url and returns the HTTP status of the document it ends on
// (after redirects).
func (b *browser) openStatus(url string) int {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserStep)
	defer cancel()
	resp, err := chromedp.RunResponse(ctx, chromedp.Navigate(url))
	if err != nil {
		b.t.Fatalf("browser: open %s: %v", url, err)
	}
	return int(resp.Status)
}

// openErr navigates to url and returns the navigation's error (a certificate the browser
// does not trust: net::ERR_CERT_AUTHORITY_INVALID).
func (b *browser) openErr(url string) error {
	ctx, cancel := context.WithTimeout(b.ctx, browserStep)
	defer cancel()
	return chromedp.Do(ctx, chromedp.Navigate(url))
}

// location is the tab's URL.
func (b *browser) location() string {
	b.t.Helper()
	return runAction(b, "read the location", chromedp.Location())
}

// wait waits until an element matching the CSS selector is visible.
func (b *browser) wait(sel string) {
	b.t.Helper()
	b.do(sel+" visible", chromedp.WaitVisible(chromedp.CSS(sel)))
}

// text waits for the element to be visible and returns its text as rendered.
func (b *browser) text(sel string) string {
	b.t.Helper()
	b.wait(sel)
	return runAction(b, "the text of "+sel, chromedp.Text(chromedp.CSS(sel)))
}

// waitText waits until an element matching sel has a text content containing want, and
// returns that text.
func (b *browser) waitText(sel, want string) string {
	b.t.Helper()
	const pred = `(sel, want) => {
		for (const e of document.querySelectorAll(sel)) {
			if (e.textContent.includes(want)) return e.textContent;
		}
		return false;
	}`
	s, err := poll[string](b, pred, sel, want)
	if err != nil {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		defer cancel()
		now, _ := chromedp.Run(ctx, chromedp.Evaluate[string](
			fmt.Sprintf(`Array.from(document.querySelectorAll(%s), e => e.textContent).join("\n")`, jsString(sel))))
		b.t.Fatalf("browser: %q in %s: %v; it says %q", want, sel, err, now)
	}
	return s
}

// until waits for a JavaScript expression to be truthy.
func (b *browser) until(what, expr string) {
	b.t.Helper()
	if _, err := poll[any](b, "() => ("+expr+")"); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// poll waits, within one step's limit, for the JavaScript function fn to return a truthy
// value for args, and returns that value. The page's animation frames run the check; a
// navigation under way (the page it ran in is gone) starts it again in the new page.
func poll[T any](b *browser, fn string, args ...any) (T, error) {
	ctx, cancel := context.WithTimeout(b.ctx, browserStep)
	defer cancel()
	for {
		left := time.Until(deadlineOf(ctx))
		v, err := chromedp.Run(ctx, chromedp.PollFunction[T](fn, chromedp.WithPollingArgs(args...), chromedp.WithPollingTimeout(left)))
		if err == nil || !navigated(err) || ctx.Err() != nil {
			return v, err
		}
		// The new page's document: a readiness signal to poll in again.
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`true`)); err != nil && !navigated(err) {
			return v, err
		}
	}
}

func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// navigated says whether err is the page's JavaScript context going away under a check.
func navigated(err error) bool {
	s := err.Error()
	return strings.Contains(s, "Cannot find context with specified id") ||
		strings.Contains(s, "Execution context was destroyed") ||
		strings.Contains(s, "Inspected target navigated or closed")
}

// click clicks the first visible element matching the CSS selector.
func (b *browser) click(sel string) {
	b.t.Helper()
	b.do("click "+sel, chromedp.Click(chromedp.CSS(sel)))
}

// typeInto types text into the (visible) element matching sel, key by key.
func (b *browser) typeInto(sel, text string) {
	b.t.Helper()
	b.do("type into "+sel, chromedp.SendKeys(chromedp.CSS(sel), text))
}

// clear empties the input matching sel the way a user does, with Backspace (the page sees
// its input events).
func (b *browser) clear(sel string) {
	b.t.Helper()
	v := runAction(b, "the value of "+sel, chromedp.Value(chromedp.CSS(sel)))
	b.do("clear "+sel, chromedp.Focus(chromedp.CSS(sel)),
		chromedp.KeyEvent(strings.Repeat(kb.End, 1)+strings.Repeat(kb.Backspace, len([]rune(v)))))
}

// keys types text (a "\r" is Enter) into whatever has the focus, the way Puppeteer does:
// per key one keyDown carrying the key's text, then its keyUp. (chromedp.KeyEvent's
// keyDown-char-keyUp reaches xterm.js, which focuses a hidden textarea when clicked, as
// two keys.)
func (b *browser) keys(text string) {
	b.t.Helper()
	b.do("type "+jsString(text), chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		for _, r := range text {
			for _, k := range kb.Encode(r) {
				switch k.Type {
				case kb.KeyChar:
					continue
				case kb.KeyDown:
					if ch := charOf(r); ch != "" {
						k.Text, k.UnmodifiedText = ch, ch
					} else {
						k.Type = kb.KeyRawDown
					}
				}
				if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, *k); err != nil {
					return err
				}
			}
		}
		return nil
	}))
}

// charOf is the text a key types: the rune if it prints, "\r" for Enter.
func charOf(r rune) string {
	if r == '\r' || r == '\n' {
		return "\r"
	}
	if unicode.IsPrint(r) {
		return string(r)
	}
	return ""
}

// count is how many elements match the CSS selector now.
func (b *browser) count(sel string) int {
	b.t.Helper()
	return runAction(b, "count "+sel, chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll(%s).length`, jsString(sel))))
}

// eval evaluates a JavaScript expression in the page, awaiting a promise, and decodes its
// value into T.
func evalJS[T any](b *browser, expr string) T {
	b.t.Helper()
	return runAction(b, "evaluate "+expr, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
}

// fetchStatus makes the page fetch url (same origin: the page's cookies go with it) with
// method, JSON body and headers, and returns the HTTP status and the body.
func (b *browser) fetchStatus(method, url string, headers map[string]string, body string) (int, string) {
	b.t.Helper()
	if headers == nil {
		headers = map[string]string{}
	}
	h, _ := json.Marshal(headers)
	init := fmt.Sprintf(`{method: %s, headers: %s, credentials: "same-origin"}`, jsString(method), h)
	if body != "" {
		init = fmt.Sprintf(`{method: %s, headers: %s, credentials: "same-origin", body: %s}`, jsString(method), h, jsString(body))
	}
	type answer struct {
		Status int    `json:"status"`
		Body   string `json:"body"`
	}
	r := evalJS[answer](b, fmt.Sprintf(`fetch(%s, %s).then(async r => ({status: r.status, body: await r.text()}))`, jsString(url), init))
	return r.Status, r.Body
}

// canvasInk is how many pixels of the first canvas inside sel are not blank (neither
// transparent nor black), read with getImageData.
func (b *browser) canvasInk(sel string) int {
	b.t.Helper()
	return evalJS[int](b, fmt.Sprintf(`(() => {
		const c = document.querySelector(%s + " canvas");
		if (!c || !c.width || !c.height) return -1;
		const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
		let n = 0;
		for (let i = 0; i < d.length; i += 4) if (d[i+3] && (d[i] || d[i+1] || d[i+2])) n++;
		return n;
	})()`, jsString(sel)))
}

// png takes a PNG screenshot of the browser's viewport.
func (b *browser) png() []byte {
	b.t.Helper()
	return runAction(b, "take a screenshot", chromedp.CaptureScreenshot())
}

// screenshot saves the viewport as name.png in $IBCM_SCREENSHOTS, when it is set (the
// README's pictures: IBCM_SCREENSHOTS=$PWD/docs/console make integration …).
func (b *browser) screenshot(name string) {
	b.t.Helper()
	dir := os.Getenv("IBCM_SCREENSHOTS")
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), b.png(), 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	q, _ := json.Marshal(s)
	return string(q)
}

// isCertError says whether a navigation failed on the server's certificate.
func isCertError(err error) bool {
	return err != nil && strings.Contains(err.Error(), "ERR_CERT_")
}
