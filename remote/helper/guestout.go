package helper

import (
	"bytes"
	"io"
	"unicode/utf8"
)

// GuestOutput carries the terminal output of an unenrolled device (a security-code guest)
// to the helper's terminal without the sequences by which an untrusted program can act on
// that terminal rather than draw on it: operating-system commands (ESC ], e.g. OSC 52
// writing the helper's clipboard, OSC 8 links, window titles a title report would type
// back), device-control strings (ESC P: passthrough, DECRQSS answers), APC, PM and SOS
// strings, GNU screen's and tmux's titles (ESC k … ST), window manipulation (CSI … t), and the C1 controls encoded in UTF-8 (U+0080 to
// U+009F, which some terminals take as those introducers). Only valid UTF-8 passes: an
// 8-bit C1 byte (0x9B CSI, 0x9D OSC, 0x90 DCS) is a control to a terminal not decoding
// UTF-8, an overlong encoding one to a lax decoder. Escape sequences that change how the
// terminal reads rather than what it shows are dropped (ESC % @ leaves UTF-8 for ISO 2022,
// ESC SP F/G and the like), and so are the requests a terminal answers by typing into its
// input (DSR, DA, DECID, DECRQM, XTVERSION, DECRQCRA, ENQ…): the answer lands in the
// session while it lasts and in the helper's shell when it comes after. Colours, cursor
// movement, erasing and the like pass, so shells and editors still work. It keeps its
// state across writes: a sequence split between two reads is recognised.
type GuestOutput struct {
	w     io.Writer
	state guestState
	csi   []byte // the CSI sequence being read, held until its final byte says whether it passes
	esc   []byte // the intermediates of an ESC sequence being read
	u     []byte // a UTF-8 sequence being read
	out   []byte
}

type guestState uint8

const (
	gsGround    guestState = iota
	gsEsc                  // after ESC
	gsCSI                  // inside ESC [ …
	gsString               // inside OSC, DCS, APC, PM or SOS: dropped up to BEL or ST
	gsStringEsc            // ESC inside a string: ST (ESC \) ends it
	gsUTF8                 // inside a multi-byte UTF-8 sequence
	gsEscInter             // after ESC and intermediate bytes (0x20–0x2F)
)

// maxCSI bounds a CSI sequence; a longer one is dropped whole.
const maxCSI = 64

// NewGuestOutput returns a filter writing to w.
func NewGuestOutput(w io.Writer) *GuestOutput { return &GuestOutput{w: w} }

// Write filters p and writes what passes; it reports len(p) when the write succeeded.
func (g *GuestOutput) Write(p []byte) (int, error) {
	g.out = g.out[:0]
	for _, b := range p {
		g.step(b)
	}
	if len(g.out) > 0 {
		if _, err := g.w.Write(g.out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (g *GuestOutput) step(b byte) {
	switch g.state {
	case gsGround:
		switch {
		case b == 0x1b:
			g.state = gsEsc
		case b == 0x05: // ENQ: the terminal types its answerback
		case b >= 0x80:
			g.state, g.u = gsUTF8, append(g.u[:0], b)
			g.rune()
		default:
			g.out = append(g.out, b)
		}
	case gsUTF8:
		if b&0xc0 != 0x80 { // not a continuation: what was read is dropped, b read afresh
			g.state = gsGround
			g.step(b)
			return
		}
		g.u = append(g.u, b)
		g.rune()
	case gsEsc:
		switch b {
		case '[':
			g.state, g.csi = gsCSI, append(g.csi[:0], 0x1b, '[')
		case ']', 'P', '_', '^', 'X', 'k': // k: GNU screen's and tmux's title
			g.state = gsString
		case 0x1b:
			// ESC ESC: the first is dropped, the second starts again
		case 'Z': // DECID: answered as DA
			g.state = gsGround
		default:
			if b >= 0x20 && b <= 0x2f {
				g.state, g.esc = gsEscInter, append(g.esc[:0], b)
				return
			}
			g.state = gsGround
			if b >= 0x80 || b < 0x20 { // not an escape sequence: the ESC is dropped, the byte read afresh
				g.step(b)
				return
			}
			g.out = append(g.out, 0x1b, b)
		}
	case gsEscInter:
		switch {
		case b >= 0x20 && b <= 0x2f:
			if len(g.esc) < 4 {
				g.esc = append(g.esc, b)
			}
		case b >= 0x30 && b <= 0x7e: // the final byte
			g.state = gsGround
			// Designations of character sets (ESC ( 0, ESC ) B…) and ESC # 8 pass; ESC %
			// (UTF-8 off), ESC SP (7- or 8-bit controls, conformance levels) and the rest not.
			if len(g.esc) < 4 && bytes.IndexByte([]byte("()*+-./#"), g.esc[0]) >= 0 {
				g.out = append(append(append(g.out, 0x1b), g.esc...), b)
			}
		case b == 0x1b:
			g.state = gsEsc
		default: // a control or a byte above ASCII ends the sequence, dropped; b read afresh
			g.state = gsGround
			g.step(b)
		}
	case gsCSI:
		switch {
		case b >= 0x40 && b <= 0x7e: // the final byte
			g.state = gsGround
			if !answered(g.csi[2:], b) && len(g.csi) < maxCSI {
				g.out = append(append(g.out, g.csi...), b)
			}
		case b >= 0x20 && b <= 0x3f: // parameters and intermediates
			g.csi = append(g.csi, b)
			if len(g.csi) > maxCSI {
				g.csi = g.csi[:maxCSI] // dropped at its final byte; the buffer stays bounded
			}
		case b == 0x1b:
			g.state = gsEsc // a new sequence cancels this one
		case b == 0x18 || b == 0x1a: // CAN, SUB cancel
			g.state = gsGround
		default: // a control inside CSI: terminals act on it and go on
			if b < 0x20 {
				if b != 0x05 {
					g.out = append(g.out, b)
				}
			} else {
				g.state = gsGround
			}
		}
	case gsString:
		switch b {
		case 0x07, 0x18, 0x1a: // BEL ends an OSC; CAN and SUB cancel
			g.state = gsGround
		case 0x1b:
			g.state = gsStringEsc
		}
	case gsStringEsc:
		switch b {
		case '\\':
			g.state = gsGround
		case 0x1b:
		default:
			g.state = gsString
		}
	}
}

// rune passes the UTF-8 sequence read so far once it is whole: valid and no C1 control.
func (g *GuestOutput) rune() {
	if !utf8.FullRune(g.u) {
		return
	}
	g.state = gsGround
	r, n := utf8.DecodeRune(g.u)
	// Invalid (n 1): the lead and the continuations read after it are dropped; each would be
	// invalid alone.
	if n == len(g.u) && !(r == utf8.RuneError && n == 1) && (r < 0x80 || r > 0x9f) {
		g.out = append(g.out, g.u...)
	}
	g.u = g.u[:0]
}

// answered reports whether a CSI sequence with these parameters and intermediates and this
// final byte is one the terminal answers by typing into its input, or one that acts on its
// window or printer (t: window operations and reports).
func answered(params []byte, final byte) bool {
	var prefix, inter byte
	if len(params) > 0 && params[0] >= '<' && params[0] <= '?' {
		prefix = params[0]
	}
	if i := bytes.IndexFunc(params, func(r rune) bool { return r >= 0x20 && r <= 0x2f }); i >= 0 {
		inter = params[i]
	}
	switch final {
	case 't', 'n', 'c', 'i': // window ops, DSR, DA 1 2 3, media copy
		return true
	case 'x': // DECREQTPARM
		return inter == 0
	case 'p': // DECRQM
		return inter == '$'
	case 'q': // XTVERSION
		return prefix == '>'
	case 'u': // kitty keyboard flags, DECRQTSR
		return prefix == '?' || inter == '$'
	case 'y': // DECRQCRA
		return inter == '*'
	case 'w': // DECRQPSR
		return inter == '$'
	case 'S', 'm': // XTSMGRAPHICS, XTQMODKEYS
		return prefix == '?'
	case 'R': // XTREPORTCOLORS
		return inter == '#'
	}
	return false
}

// GuestReset, written to the helper's terminal (not through the filter) when a guest's
// session is over, turns off what the guest's program may have left on that makes the
// terminal type into its input of its own: mouse tracking and its encodings, focus
// events, bracketed paste, the kitty keyboard protocol's flags and modifyOtherKeys, the
// application cursor and keypad modes; and leaves the alternate screen, the DEC graphics
// character set and the colours. What the helper types next is read by their own shell.
const GuestReset = "\x1b[?9l\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1004l\x1b[?1005l\x1b[?1006l\x1b[?1015l\x1b[?1016l" +
	"\x1b[?2004l\x1b[=0;1u\x1b[>4;0m\x1b[?1l\x1b>\x1b[?1049l\x1b(B\x1b[0m\x1b[?25h"
