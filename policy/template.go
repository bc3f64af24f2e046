package policy

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Template is a denial body's template compiled once: its text, the
// {edge_limit.*} placeholders (filled from the denial, straight into the
// body's buffer) and the other placeholders (asked of the edge: request
// placeholders, Caddy's replacer).
type Template struct {
	segs []segment
}

type segment struct {
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

// Placeholders gives the values of the placeholders that are not
// {edge_limit.*}: Caddy's replacer has this method.
type Placeholders interface {
	GetString(name string) (string, bool)
}

// ParseTemplate compiles a body template: {name}, where name starts with a
// letter and holds letters, digits and ._-/:, is a placeholder; \{ and \}
// are literal braces; any other brace is literal too, so that JSON can be
// written as it is.
func ParseTemplate(s string) *Template {
	t := &Template{}
	var text strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && (s[i+1] == '{' || s[i+1] == '}'):
			text.WriteByte(s[i+1])
			i++
		case c == '{' && placeholderLen(s[i:]) > 0:
			n := placeholderLen(s[i:])
			if text.Len() > 0 {
				t.segs = append(t.segs, segment{text: text.String()})
				text.Reset()
			}
			name := s[i+1 : i+n-1]
			if v, ok := edgeNames[name]; ok {
				t.segs = append(t.segs, segment{edge: v})
			} else {
				t.segs = append(t.segs, segment{name: name})
			}
			i += n - 1
		default:
			text.WriteByte(c)
		}
	}
	if text.Len() > 0 {
		t.segs = append(t.segs, segment{text: text.String()})
	}
	return t
}

// placeholderLen returns the length of the placeholder at the start of s,
// or 0.
func placeholderLen(s string) int {
	if len(s) < 3 || !isLetter(s[1]) {
		return 0
	}
	for i := 2; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '}':
			return i + 1
		case isLetter(c) || c >= '0' && c <= '9' || strings.IndexByte("._-/:", c) >= 0:
		default:
			return 0
		}
	}
	return 0
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// render writes the body of d into b; others gives the placeholders that
// are not {edge_limit.*} (unknown ones are empty, and a value is never
// expanded again: placeholders in client input stay text).
func (t *Template) render(b []byte, d *Denial, others Placeholders) []byte {
	esc := d.Policy.Escape
	for i := range t.segs {
		s := &t.segs[i]
		switch {
		case s.edge != edgeNone:
			b = d.appendValue(b, s.edge, esc)
		case s.name != "":
			if others != nil {
				v, _ := others.GetString(s.name)
				b = AppendEscaped(b, v, esc)
			}
		default:
			b = append(b, s.text...)
		}
	}
	return b
}

// Escaping is how a body escapes the values of its placeholders, for its
// content type: a hostile header echoed in the body cannot break out of
// its string or element. A kind, not a function: Yaegi hands a function of
// the plugin over to native code as an interpreter node.
type Escaping uint8

// The escapings.
const (
	EscapeNone Escaping = iota
	EscapeJSON
	EscapeJS
	EscapeHTML
)

// EscapingFor returns the escaping of a body of this content type: JSON
// string content, a JavaScript string in any quotes or backticks, HTML or
// XML text and attribute values; other types as they are.
func EscapingFor(contentType string) Escaping {
	ct := strings.ToLower(contentType)
	switch {
	case strings.Contains(ct, "json"):
		return EscapeJSON
	case strings.Contains(ct, "javascript"), strings.Contains(ct, "ecmascript"):
		return EscapeJS
	case strings.Contains(ct, "html"), strings.Contains(ct, "xml"):
		return EscapeHTML
	}
	return EscapeNone
}

// AppendEscaped appends s to b, escaped.
func AppendEscaped(b []byte, s string, e Escaping) []byte {
	switch e {
	case EscapeJSON:
		return appendJSON(b, s)
	case EscapeJS:
		return appendJS(b, s)
	case EscapeHTML:
		return appendHTML(b, s)
	}
	return append(b, s...)
}

const hexDigits = "0123456789abcdef"

// appendJSON escapes s as JSON string content: a hostile header echoed in
// the body cannot break out of its string (nor, for <, > and &, out of a
// script element).
func appendJSON(b []byte, s string) []byte { return appendString(b, s, false) }

// appendJS escapes s for a JavaScript string of any kind: in single or
// double quotes, or in backticks (a template literal, where ` would end
// the string and ${ would start code: both are written as \u escapes,
// which a template literal reads as the characters, never as syntax); and
// for a regular expression literal or a comment, where / would end it (a
// string reads \u002f as /).
func appendJS(b []byte, s string) []byte { return appendString(b, s, true) }

// appendString is appendJSON, and appendJS when js is set.
func appendString(b []byte, s string, js bool) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == '<' || c == '>' || c == '&' || js && (c == '\'' || c == '`' || c == '$' || c == '/'):
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

// appendHTML escapes s as HTML text and as an attribute value, quoted or
// not (the characters html/template escapes in an unquoted attribute:
// whitespace, which would end the value and start another attribute, =,
// `, +, and the quotes), and as a string inside an HTML page's script or
// style element, where character references are not decoded: its quotes
// and backslash are written as references, so that the value can neither
// end the string nor escape the template's own closing quote. A reference
// renders as the character it stands for, in text and attributes alike.
func appendHTML(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '<':
			b = append(b, "&lt;"...)
		case '>':
			b = append(b, "&gt;"...)
		case '&':
			b = append(b, "&amp;"...)
		case '"', '\'', '`', '=', '+', '\\', ' ', '\t', '\n', '\v', '\f', '\r':
			b = append(b, '&', '#')
			if c >= 100 {
				b = append(b, '0'+c/100)
			}
			if c >= 10 {
				b = append(b, '0'+c/10%10)
			}
			b = append(b, '0'+c%10, ';')
		default:
			b = append(b, c)
		}
	}
	return b
}

// plural is n with its unit: "1 second", "56 seconds".
func plural(n int64, unit string) string {
	s := strconv.FormatInt(n, 10) + " " + unit
	if n != 1 {
		s += "s"
	}
	return s
}

// humanUnits are the units HumanSeconds speaks in, largest first.
var humanUnits = [4]struct {
	size int64
	name string
}{{86400, "day"}, {3600, "hour"}, {60, "minute"}, {1, "second"}}

// HumanSeconds says n seconds as a person would, in at most two units:
// "1 second", "45 seconds", "1 minute 30 seconds", "2 hours", "1 day 3
// hours". It is exact or rounded up, never sooner than n: a client that
// waits as long as it says gets through.
func HumanSeconds(n int64) string {
	if n < 60 {
		return plural(n, "second")
	}
	for i := 0; i < 3; i++ {
		u := humanUnits[i]
		if n < u.size {
			continue
		}
		big, rest := n/u.size, n%u.size
		if rest == 0 {
			return plural(big, u.name)
		}
		next := humanUnits[i+1]
		small := (rest + next.size - 1) / next.size
		if small*next.size == u.size {
			return plural(big+1, u.name)
		}
		return plural(big, u.name) + " " + plural(small, next.name)
	}
	return plural(n, "second")
}
