package edgelimit

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// bodyTemplate is a denial body's template compiled once: its text, the
// {edge_limit.*} placeholders (filled from the denial, straight into the
// body's buffer) and the other placeholders (asked of the replacer). A
// denial renders it without the replacer's own templating, which allocates
// for every placeholder.
type bodyTemplate struct {
	segs []bodySeg
}

type bodySeg struct {
	text string
	edge edgeValue // one of the {edge_limit.*} values, or 0
	name string    // another placeholder's name
}

// edgeValue names an {edge_limit.*} placeholder.
type edgeValue uint8

const (
	edgeNone edgeValue = iota
	edgeStatus
	edgeName
	edgeKey
	edgeTier
	edgeRetryAfter
	edgeRetryAfterSeconds
	edgeRetryAfterHuman
	edgeLimit
	edgeRemaining
	edgeReset
	edgeWindow
)

var edgeNames = map[string]edgeValue{
	"edge_limit.status":              edgeStatus,
	"edge_limit.name":                edgeName,
	"edge_limit.key":                 edgeKey,
	"edge_limit.tier":                edgeTier,
	"edge_limit.retry_after":         edgeRetryAfter,
	"edge_limit.retry_after_seconds": edgeRetryAfterSeconds,
	"edge_limit.retry_after_human":   edgeRetryAfterHuman,
	"edge_limit.limit":               edgeLimit,
	"edge_limit.remaining":           edgeRemaining,
	"edge_limit.reset":               edgeReset,
	"edge_limit.window":              edgeWindow,
}

// parseBody compiles a template as compileTemplate wrote it: placeholders
// {name}, and braces escaped with a backslash.
func parseBody(tmpl string) *bodyTemplate {
	t := &bodyTemplate{}
	var text strings.Builder
	flush := func() {
		if text.Len() > 0 {
			t.segs = append(t.segs, bodySeg{text: text.String()})
			text.Reset()
		}
	}
	for i := 0; i < len(tmpl); i++ {
		c := tmpl[i]
		switch {
		case c == '\\' && i+1 < len(tmpl) && (tmpl[i+1] == '{' || tmpl[i+1] == '}'):
			text.WriteByte(tmpl[i+1])
			i++
		case c == '{':
			end := strings.IndexByte(tmpl[i:], '}')
			if end < 0 {
				text.WriteString(tmpl[i:])
				i = len(tmpl)
				continue
			}
			flush()
			name := tmpl[i+1 : i+end]
			if v, ok := edgeNames[name]; ok {
				t.segs = append(t.segs, bodySeg{edge: v})
			} else {
				t.segs = append(t.segs, bodySeg{name: name})
			}
			i += end
		default:
			text.WriteByte(c)
		}
	}
	flush()
	return t
}

// denial is what a denial's placeholders are made of. It is the
// {edge_limit.*} provider of the request's replacer, so that handle_errors
// routes and log formats read them, computed only when read.
type denial struct {
	h      *Handler
	l      *compiledLimit
	key    string
	tier   string
	status int
	retry  int64
	res    limiter.Result
	hdr    [3]string // the values of the denial's headers
}

// value provides the {edge_limit.*} placeholders to a replacer.
func (d *denial) value(name string) (any, bool) {
	v, ok := edgeNames[name]
	if !ok {
		return nil, false
	}
	switch v {
	case edgeStatus:
		return d.status, true
	case edgeName:
		return d.l.name, true
	case edgeKey:
		return d.h.displayKey(d.key), true
	case edgeTier:
		return d.tier, true
	case edgeRetryAfter:
		return d.retry, true
	case edgeRetryAfterSeconds:
		return secondsText(d.retry), true
	case edgeRetryAfterHuman:
		return humanSeconds(d.retry), true
	case edgeLimit:
		return d.res.Limit, true
	case edgeRemaining:
		return d.res.Remaining, true
	case edgeReset:
		return resetUnix(&d.res), true
	case edgeWindow:
		return secondsCeil(d.res.Window), true
	}
	return nil, false
}

// appendValue writes an {edge_limit.*} value, escaped for the body.
func (d *denial) appendValue(b []byte, v edgeValue, esc escaper) []byte {
	switch v {
	case edgeStatus:
		return strconv.AppendInt(b, int64(d.status), 10)
	case edgeName:
		return esc(b, d.l.name)
	case edgeKey:
		return d.h.appendDisplayKey(b, d.key, esc)
	case edgeTier:
		return esc(b, d.tier)
	case edgeRetryAfter:
		return strconv.AppendInt(b, d.retry, 10)
	case edgeRetryAfterSeconds:
		b = strconv.AppendInt(b, d.retry, 10)
		if d.retry == 1 {
			return append(b, " second"...)
		}
		return append(b, " seconds"...)
	case edgeRetryAfterHuman:
		return esc(b, humanSeconds(d.retry))
	case edgeLimit:
		return strconv.AppendInt(b, d.res.Limit, 10)
	case edgeRemaining:
		return strconv.AppendInt(b, d.res.Remaining, 10)
	case edgeReset:
		return strconv.AppendInt(b, resetUnix(&d.res), 10)
	case edgeWindow:
		return strconv.AppendInt(b, secondsCeil(d.res.Window), 10)
	}
	return b
}

// render writes the body of d into b.
func (t *bodyTemplate) render(b []byte, d *denial, repl *caddy.Replacer, esc escaper) []byte {
	for i := range t.segs {
		s := &t.segs[i]
		switch {
		case s.edge != edgeNone:
			b = d.appendValue(b, s.edge, esc)
		case s.name != "":
			// Unknown placeholders are empty; a value is never expanded
			// again (placeholders in client input stay text).
			if repl != nil {
				v, _ := repl.GetString(s.name)
				b = esc(b, v)
			}
		default:
			b = append(b, s.text...)
		}
	}
	return b
}

// escaper appends s to b, escaped for a body's content type.
type escaper func(b []byte, s string) []byte

func appendRaw(b []byte, s string) []byte { return append(b, s...) }

// appendJSON escapes s as JSON string content: a hostile header echoed in
// the body cannot break out of its string (nor, for <, > and &, out of a
// script element).
func appendJSON(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == 0x2028 || r == 0x2029 {
			b = append(b, `\u202`...)
			b = append(b, hexDigits[r&0xf])
		} else {
			b = utf8.AppendRune(b, r)
		}
		i += size
	}
	return b
}

// appendJS escapes s for a JavaScript string in either quotes.
func appendJS(b []byte, s string) []byte {
	start := len(b)
	b = appendJSON(b, s)
	if strings.IndexByte(string(b[start:]), '\'') < 0 {
		return b
	}
	escaped := strings.ReplaceAll(string(b[start:]), "'", `\u0027`)
	return append(b[:start], escaped...)
}

// appendHTML escapes s as HTML text (and attribute value).
func appendHTML(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '<':
			b = append(b, "&lt;"...)
		case '>':
			b = append(b, "&gt;"...)
		case '&':
			b = append(b, "&amp;"...)
		case '"':
			b = append(b, "&#34;"...)
		case '\'':
			b = append(b, "&#39;"...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// escaperFor returns how values are escaped in a body of this content
// type.
func escaperFor(contentType string) escaper {
	ct := strings.ToLower(contentType)
	switch {
	case strings.Contains(ct, "json"):
		return appendJSON
	case strings.Contains(ct, "javascript"), strings.Contains(ct, "ecmascript"):
		return appendJS
	case strings.Contains(ct, "html"), strings.Contains(ct, "xml"):
		return appendHTML
	}
	return appendRaw
}

// appendDisplayKey writes the key as logs, events and bodies show it.
func (h *Handler) appendDisplayKey(b []byte, key string, esc escaper) []byte {
	if h.rawKeys {
		if len(key) > 256 {
			key = key[:256]
		}
		return esc(b, key)
	}
	var sum [sha256.Size]byte
	if h.keyMAC != nil {
		mac := hmac.New(sha256.New, h.keyMAC)
		mac.Write([]byte(key))
		mac.Sum(sum[:0])
	} else {
		sum = sha256.Sum256([]byte(key))
	}
	return hex.AppendEncode(b, sum[:8])
}

// displayKey is appendDisplayKey as a string.
func (h *Handler) displayKey(key string) string {
	return string(h.appendDisplayKey(nil, key, appendRaw))
}

// bodyBuffers hold rendered bodies between render and write.
var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}
