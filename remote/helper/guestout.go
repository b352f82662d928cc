package helper

import "io"

// GuestOutput carries the terminal output of an unenrolled device (a security-code guest)
// to the helper's terminal without the sequences by which an untrusted program can act on
// that terminal rather than draw on it: operating-system commands (ESC ], e.g. OSC 52
// writing the helper's clipboard, OSC 8 links, window titles a title report would type
// back), device-control strings (ESC P: passthrough, DECRQSS answers), APC, PM and SOS
// strings, window manipulation (CSI … t), and the C1 controls encoded in UTF-8 (U+0080 to
// U+009F, which some terminals take as those introducers). Colours, cursor movement,
// erasing and the like pass, so shells and editors still work. It keeps its state across
// writes: a sequence split between two reads is recognised.
type GuestOutput struct {
	w     io.Writer
	state guestState
	csi   []byte // the CSI sequence being read, held until its final byte says whether it passes
	out   []byte
}

type guestState uint8

const (
	gsGround    guestState = iota
	gsEsc                  // after ESC
	gsCSI                  // inside ESC [ …
	gsString               // inside OSC, DCS, APC, PM or SOS: dropped up to BEL or ST
	gsStringEsc            // ESC inside a string: ST (ESC \) ends it
	gsC2                   // after the UTF-8 lead byte 0xC2: a C1 control follows when 0x80–0x9F
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
		switch b {
		case 0x1b:
			g.state = gsEsc
		case 0xc2:
			g.state = gsC2
		default:
			g.out = append(g.out, b)
		}
	case gsC2:
		g.state = gsGround
		switch {
		case b >= 0x80 && b <= 0x9f: // a C1 control: dropped
		case b >= 0xa0 && b <= 0xbf: // U+00A0 to U+00BF
			g.out = append(g.out, 0xc2, b)
		default: // a lone lead byte (invalid UTF-8) is dropped, so that no later byte pairs with it
			g.step(b)
		}
	case gsEsc:
		switch b {
		case '[':
			g.state, g.csi = gsCSI, append(g.csi[:0], 0x1b, '[')
		case ']', 'P', '_', '^', 'X':
			g.state = gsString
		case 0x1b:
			// ESC ESC: the first is dropped, the second starts again
		default:
			g.state = gsGround
			if b >= 0x80 { // not an escape sequence: the ESC is dropped, the byte read afresh
				g.step(b)
				return
			}
			g.out = append(g.out, 0x1b, b)
		}
	case gsCSI:
		switch {
		case b >= 0x40 && b <= 0x7e: // the final byte
			g.state = gsGround
			if b != 't' && len(g.csi) < maxCSI {
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
				g.out = append(g.out, b)
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
