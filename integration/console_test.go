package integration

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var consoleLinkRE = regexp.MustCompile(`https://\S+/login/[A-Za-z0-9_-]+`)

// TestConsoleBrowser drives the web console in a real headless Chromium (Debian's) that
// trusts the site's root: a device on the internet whose user shares their terminal and
// their X display (`ibcm-client share --screen`, on real terminals); a Help Desk Operator
// logs in with the one-time URL `ibcm console login` prints, finds the device in the list
// (and filters it out by search), starts a control terminal session from the device's page
// (the sharer consents; their card says it comes from the web console), types a command
// into xterm.js and sees its output, chats both ways; starts a screen view session and
// sees the display's colour on noVNC's canvas; the audit has both as console sessions,
// e2e=false, and so does the CSV the sessions page links to; logout ends the cookie
// session. The one-time URL does not work twice. A Read-only Analyst sees the device but
// no start buttons, and the API answers their start with 403 (forbidden, past the CSRF
// check). With IBCM_SCREENSHOTS=DIR set, the main pages are saved there as PNGs (the
// README's pictures, docs/console/).
func TestConsoleBrowser(t *testing.T) {
	for _, tool := range []string{"Xvfb", "x11vnc", "xsetroot", "xterm", "xdotool"} {
		needTool(t, tool)
	}
	display := startXvfb(t)
	// A solid colour the canvas must show (x11vnc draws its pointer on it), and a small
	// xterm on it (for the picture).
	if out, err := exec.Command("xsetroot", "-display", display, "-solid", "#20c040").CombinedOutput(); err != nil {
		t.Fatalf("xsetroot: %v %s", err, out)
	}
	xt := exec.Command("xterm", "-display", display, "-geometry", "58x6+24+24", "-title", "pc-con1",
		"-e", "sh", "-c", `echo "pc-con1: this display, seen in the ibcm web console"; sleep 600`)
	if err := xt.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = xt.Process.Kill(); _ = xt.Wait() })
	xdo := exec.Command("xdotool", "search", "--sync", "--onlyvisible", "--name", "pc-con1")
	xdo.Env = append(os.Environ(), "DISPLAY="+display)
	if out, err := xdo.CombinedOutput(); err != nil {
		t.Fatalf("xdotool search: %v %s", err, out)
	}

	s := startSite(t, "sqlite")
	consoleAddr := consoleListen(t, s)
	// `site up` is ready once the MP's listeners are: the console's opens with them.
	waitFor(t, 10*time.Second, "the console listener", func() bool {
		c, err := net.Dial("tcp", consoleAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	dev := enrollDevice(t, s, "pc-con1")
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv, blackHole(t)) // on the internet: the relay
	sock, _ := startSharingAgent(t, dev, resolv)
	waitFor(t, 15*time.Second, "the agent's notification channel", func() bool { return statusOf(t, dev).Notify })
	id := deviceIDOf(t, dev)
	helen := addHelper(t, s, "helen", "Help Desk Operator", "Helen Desk", s.mpInternet)
	ana := addHelper(t, s, "ana", "Read-only Analyst", "Ana Lyst", s.mpInternet)

	tm := newTerminals(t)
	tm.open("sharer", []string{"DISPLAY=" + display}, bin.client+" share --screen --share-socket "+sock+" --shell /bin/sh")
	tm.waitFor("sharer", "ibcm: connected to the ibcm agent", 10*time.Second)

	b := newBrowser(t, 3*time.Minute, []string{s.path("ca/root.crt")}, "ibcm.corp.test", "ibcm.example.test")
	link := consoleLogin(t, helen)

	// 1. The one-time URL logs Helen in and lands on the device list.
	if code := b.openStatus(link); code != http.StatusOK {
		t.Fatalf("the one-time URL: %d", code)
	}
	origin := link[:strings.Index(link, "/login/")]
	if loc := b.location(); loc != origin+"/devices" {
		t.Errorf("after the login at %s, want %s/devices", loc, origin)
	}
	b.waitText("#user", "helen")
	row := fmt.Sprintf(`table#devices tbody tr[data-device-id=%q]`, id)
	b.waitText(row, "pc-con1")
	b.screenshot("devices")
	// The search filters as one types.
	b.typeInto("#device-search", "no-such-device")
	b.until("the row filtered out", fmt.Sprintf(`(e => !e || e.offsetParent === null)(document.querySelector(%s))`, jsString(row)))
	b.clear("#device-search")
	b.wait(row)

	// 2. The device's page offers Helen's sessions; a control terminal session.
	b.click(row + " a")
	b.waitText("#device-name", "pc-con1")
	b.wait(`button[data-start-kind=terminal][data-start-mode=control]`)
	b.wait(`button[data-start-kind=screen][data-start-mode=view]`)
	b.screenshot("device")
	b.click(`button[data-start-kind=terminal][data-start-mode=control]`)
	b.until("the live session page", `location.pathname.endsWith("/live")`)
	tm.waitFor("sharer", "allow control access for Helen Desk", 15*time.Second)
	if sc := tm.screen("sharer"); !strings.Contains(sc, "web console") {
		t.Errorf("the sharer's card does not say the session is from the web console:\n%s", sc)
	}
	tm.keys("sharer", "C-]", "y")
	b.waitText("#session-state", "active")
	b.wait("#terminal .xterm-screen")
	termSession := sessionIDOf(t, b.location())

	// Type into xterm.js (its hidden textarea takes the keys) and see the output.
	b.click("#terminal .xterm-screen")
	b.keys("echo console-$((40+2))\r")
	b.waitText("#terminal .xterm-rows", "console-42")
	tm.waitFor("sharer", "console-42", 10*time.Second)
	// Chat both ways.
	b.typeInto("#chat-input", "hello from the console, Grüße")
	b.click("#chat-send")
	tm.waitFor("sharer", "hello from the console, Grüße", 10*time.Second)
	tm.keys("sharer", "C-]", "c")
	tm.text("sharer", "thanks مرحبا")
	tm.keys("sharer", "Enter")
	b.waitText("#chat-log", "thanks مرحبا")
	b.screenshot("terminal")
	b.click("#end-session")
	b.waitText("#session-state", "ended")

	// 3. A screen view session: noVNC's canvas shows the display.
	b.open(origin + "/devices/" + id)
	b.click(`button[data-start-kind=screen][data-start-mode=view]`)
	tm.waitFor("sharer", "allow screen view access for Helen Desk", 15*time.Second)
	tm.keys("sharer", "C-]", "y")
	b.waitText("#session-state", "active")
	b.wait("#screen canvas")
	screenSession := sessionIDOf(t, b.location())
	b.until("the display's colour on the canvas", canvasColourJS("#screen", 0x20, 0xc0, 0x40)+" > 640*480/2")
	if n := b.canvasInk("#screen"); n < 640*480/2 {
		t.Errorf("%d inked pixels on the screen's canvas", n)
	}
	b.screenshot("screen")
	b.click("#end-session")
	b.waitText("#session-state", "ended")

	// 4. The audit: both sessions are the console's, not end-to-end to a helper.
	for _, sid := range []string{termSession, screenSession} {
		row := consoleSession(t, s, id, sid)
		if row["console"] != true || row["e2e"] != false || row["helper"] != "helen" || row["state"] != "ended" {
			t.Errorf("the audit of console session %s: %v", sid, row)
		}
	}
	b.open(origin + "/sessions")
	b.wait(fmt.Sprintf(`table#sessions tr[data-session-id=%q]`, termSession))
	b.wait(fmt.Sprintf(`table#sessions tr[data-session-id=%q]`, screenSession))
	b.waitText("#sessions-active-count", "0")
	b.screenshot("sessions")
	// The Remote Help report as CSV, as the page's link fetches it.
	text := evalJS[string](b, `fetch(document.getElementById("sessions-csv").href).then(r => r.ok ? r.text() : "HTTP " + r.status)`)
	records, err := csv.NewReader(strings.NewReader(text)).ReadAll()
	if err != nil || len(records) != 3 {
		t.Fatalf("the sessions CSV: %v\n%s", err, text)
	}
	col := map[string]int{}
	for i, name := range records[0] {
		col[name] = i
	}
	for _, r := range records[1:] {
		if (r[col["id"]] != termSession && r[col["id"]] != screenSession) || r[col["device_name"]] != "pc-con1" ||
			r[col["helper"]] != "helen" || r[col["e2e"]] != "false" || r[col["console"]] != "true" {
			t.Errorf("a row of the sessions CSV: %q (header %q)", r, records[0])
		}
	}

	// 5. The one-time URL does not work twice (in a browser of its own: no cookie).
	other := b.private()
	if code := other.openStatus(link); code != http.StatusUnauthorized {
		t.Errorf("the one-time URL a second time: %d, want 401", code)
	}
	other.wait("#login-needed")

	// 6. A Read-only Analyst sees the device and no start buttons; the API refuses them.
	if code := other.openStatus(consoleLogin(t, ana)); code != http.StatusOK {
		t.Fatalf("Ana's one-time URL: %d", code)
	}
	other.waitText(row, "pc-con1")
	other.open(origin + "/devices/" + id)
	other.waitText("#device-name", "pc-con1")
	other.wait("#no-remote")
	if n := other.count("button[data-start-kind]"); n != 0 {
		t.Errorf("a Read-only Analyst sees %d start buttons", n)
	}
	csrf := evalJS[string](other, `fetch("/api/me").then(r => r.json()).then(me => me.csrf)`)
	start := fmt.Sprintf(`{"device":%q,"mode":"view","kind":""}`, id)
	code, body := other.fetchStatus("POST", "/api/v1/admin/sessions", map[string]string{"X-CSRF-Token": csrf, "Content-Type": "application/json"}, start)
	if code != http.StatusForbidden || !strings.Contains(body, `"forbidden"`) {
		t.Errorf("a Read-only Analyst's session start: %d %s, want 403 forbidden", code, body)
	}
	// Without the CSRF token it is refused before any permission check.
	if code, body := other.fetchStatus("POST", "/api/v1/admin/sessions", map[string]string{"Content-Type": "application/json"}, start); code != http.StatusForbidden || !strings.Contains(body, `"csrf"`) {
		t.Errorf("a start without the CSRF token: %d %s, want 403 csrf", code, body)
	}

	// 7. Logout ends Helen's cookie session.
	b.click("#logout-button")
	b.until("the logged-out page", `location.pathname === "/logged-out"`)
	if code := b.openStatus(origin + "/devices"); code != http.StatusUnauthorized {
		t.Errorf("/devices after the logout: %d, want 401", code)
	}
	b.wait("#login-needed")
	tm.close("sharer")
}

// consoleLogin runs `ibcm console login` as the user and returns the one-time URL it prints.
func consoleLogin(t *testing.T, u helperUser) string {
	t.Helper()
	r := u.as(t, "console", "login")
	link := consoleLinkRE.FindString(r.stdout)
	if r.code != 0 || link == "" {
		t.Fatalf("ibcm console login as %s: exit %d\n%s%s", u.name, r.code, r.stdout, r.stderr)
	}
	return link
}

// sessionIDOf reads the session id from a live page's URL (/sessions/{id}/live?…).
func sessionIDOf(t *testing.T, url string) string {
	t.Helper()
	m := regexp.MustCompile(`/sessions/([^/?]+)/live`).FindStringSubmatch(url)
	if m == nil {
		t.Fatalf("not a live session page: %s", url)
	}
	return m[1]
}

// consoleSession waits until the session has ended in the audit and returns its row as
// `ibcm remote sessions --json` prints it.
func consoleSession(t *testing.T, s *testSite, device, id string) map[string]any {
	t.Helper()
	var found map[string]any
	waitFor(t, 15*time.Second, "session "+id+" ended in the audit", func() bool {
		var rows []map[string]any
		if err := json.Unmarshal([]byte(s.ibcm(t, "remote", "sessions", "--json", "--device", device)), &rows); err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r["id"] == id && r["state"] == "ended" {
				found = r
				return true
			}
		}
		return false
	})
	return found
}

// canvasColourJS is a JavaScript expression counting the pixels of the colour r, g, b on
// the first canvas inside sel (0 while there is none).
func canvasColourJS(sel string, r, g, b int) string {
	return fmt.Sprintf(`(() => {
		const c = document.querySelector(%s + " canvas");
		if (!c || !c.width || !c.height) return 0;
		const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
		let n = 0;
		for (let i = 0; i < d.length; i += 4) if (d[i] === %d && d[i+1] === %d && d[i+2] === %d) n++;
		return n;
	})()`, jsString(sel), r, g, b)
}
