// Package helper owns the helper's side of a remote-control session (DESIGN.md §9 steps 1,
// 4, 5 and 7): asking the management point for a session (Start, Join), reaching the device
// over the device's session port or the MP's relay, whichever completes its end-to-end TLS
// first (Connect), and the framed conversation inside (Session: terminal bytes, resize,
// chat, mode requests, ping, end), and for a screen session the local VNC port (ScreenPort:
// loopback, one connection, a one-time VNC password). It has no terminal of its own: `ibcm remote` attaches one,
// and the benchmark drives a Session from code:
//
//	c, _ := helper.NewClient("https://mp.corp.example", &tls.Config{Certificates: []tls.Certificate{user}, RootCAs: siteRoots}, nil)
//	start, err := c.Start(ctx, wire.SessionStartRequest{Device: "kiosk-12", Mode: "control"})
//	conn, err := c.Connect(ctx, start) // conn.Transport: "direct" or "relay"; conn.Lost(): why the other lost
//	s, err := helper.Open(ctx, conn, frame.Greeting{Rows: 24, Cols: 80})
//	s.Write([]byte("uptime\r"))
//	ev, err := s.Next() // frame.Data from the shell, Chat, Mode answers, Status, Pong, End
//	s.End("done")
package helper
