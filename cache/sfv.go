package cache

import (
	"errors"
	"fmt"
	"strings"
)

// This file reads and writes the parts of RFC 8941 (Structured Field
// Values) that Cache-Status (RFC 9211) needs: a List of Items with
// Parameters, each member naming a cache.

// SFMember is one member of a structured-field List: its bare item (an
// Inner List is kept as its text) and its parameters, as written.
type SFMember struct {
	Item   string
	Params []SFParam
}

// SFParam is one parameter: its key and its bare item as written ("?1"
// when the value was omitted, as RFC 8941 reads a bare key).
type SFParam struct {
	Key, Value string
}

// Param returns the value of the parameter key, and whether it is there.
func (m SFMember) Param(key string) (string, bool) {
	for _, p := range m.Params {
		if p.Key == key {
			return p.Value, true
		}
	}
	return "", false
}

// ParseSFList parses a field value as an RFC 8941 List (section 4.2.1),
// strictly: any error rejects the whole value, as a recipient would. An
// empty value is an empty list.
func ParseSFList(s string) ([]SFMember, error) {
	p := sfParser{s: s}
	p.skipSP()
	var out []SFMember
	for !p.done() {
		m, err := p.member()
		if err != nil {
			return nil, err
		}
		out = append(out, m)
		p.skipOWS()
		if p.done() {
			return out, nil
		}
		if p.s[p.i] != ',' {
			return nil, p.errf("want ',' after a list member")
		}
		p.i++
		p.skipOWS()
		if p.done() {
			return nil, p.errf("trailing ','")
		}
	}
	return out, nil
}

type sfParser struct {
	s string
	i int
}

func (p *sfParser) done() bool { return p.i >= len(p.s) }

func (p *sfParser) errf(format string, args ...any) error {
	return fmt.Errorf("structured field at byte %d: %s", p.i, fmt.Sprintf(format, args...))
}

func (p *sfParser) skipSP() {
	for !p.done() && p.s[p.i] == ' ' {
		p.i++
	}
}

func (p *sfParser) skipOWS() {
	for !p.done() && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *sfParser) member() (SFMember, error) {
	var m SFMember
	start := p.i
	var err error
	if !p.done() && p.s[p.i] == '(' {
		err = p.innerList()
	} else {
		err = p.bareItem()
	}
	if err != nil {
		return m, err
	}
	m.Item = p.s[start:p.i]
	m.Params, err = p.params()
	return m, err
}

func (p *sfParser) innerList() error {
	p.i++ // (
	for {
		p.skipSP()
		if p.done() {
			return p.errf("unterminated inner list")
		}
		if p.s[p.i] == ')' {
			p.i++ // the member's parameters follow
			return nil
		}
		if err := p.bareItem(); err != nil {
			return err
		}
		if _, err := p.params(); err != nil {
			return err
		}
		if p.done() || (p.s[p.i] != ' ' && p.s[p.i] != ')') {
			return p.errf("want ' ' or ')' in an inner list")
		}
	}
}

func (p *sfParser) params() ([]SFParam, error) {
	var out []SFParam
	for !p.done() && p.s[p.i] == ';' {
		p.i++
		p.skipSP()
		key, err := p.key()
		if err != nil {
			return nil, err
		}
		val := "?1"
		if !p.done() && p.s[p.i] == '=' {
			p.i++
			start := p.i
			if err := p.bareItem(); err != nil {
				return nil, err
			}
			val = p.s[start:p.i]
		}
		// A repeated key overwrites the earlier one (RFC 8941 4.2.3.2).
		replaced := false
		for j := range out {
			if out[j].Key == key {
				out[j].Value, replaced = val, true
			}
		}
		if !replaced {
			out = append(out, SFParam{Key: key, Value: val})
		}
	}
	return out, nil
}

func (p *sfParser) key() (string, error) {
	start := p.i
	if p.done() || !(isLCAlpha(p.s[p.i]) || p.s[p.i] == '*') {
		return "", p.errf("want a parameter key")
	}
	for !p.done() && (isLCAlpha(p.s[p.i]) || isDigit(p.s[p.i]) || strings.IndexByte("_-.*", p.s[p.i]) >= 0) {
		p.i++
	}
	return p.s[start:p.i], nil
}

func (p *sfParser) bareItem() error {
	if p.done() {
		return p.errf("want an item")
	}
	c := p.s[p.i]
	switch {
	case c == '-' || isDigit(c):
		return p.number()
	case c == '"':
		return p.str()
	case c == '*' || isAlpha(c):
		p.i++
		for !p.done() && (isTchar(p.s[p.i]) || p.s[p.i] == ':' || p.s[p.i] == '/') {
			p.i++
		}
		return nil
	case c == ':':
		p.i++
		for !p.done() && p.s[p.i] != ':' {
			if !isAlpha(p.s[p.i]) && !isDigit(p.s[p.i]) && strings.IndexByte("+/=", p.s[p.i]) < 0 {
				return p.errf("bad byte in a byte sequence")
			}
			p.i++
		}
		if p.done() {
			return p.errf("unterminated byte sequence")
		}
		p.i++
		return nil
	case c == '?':
		p.i++
		if p.done() || (p.s[p.i] != '0' && p.s[p.i] != '1') {
			return p.errf("want ?0 or ?1")
		}
		p.i++
		return nil
	}
	return p.errf("unexpected %q", c)
}

func (p *sfParser) number() error {
	if p.s[p.i] == '-' {
		p.i++
	}
	digits, frac, dot := 0, 0, false
	for !p.done() {
		c := p.s[p.i]
		switch {
		case isDigit(c):
			if dot {
				frac++
			} else {
				digits++
			}
		case c == '.' && !dot:
			if digits > 12 {
				return p.errf("decimal with more than 12 integer digits")
			}
			dot = true
		default:
			goto end
		}
		p.i++
	}
end:
	switch {
	case digits == 0:
		return p.errf("want a digit")
	case !dot && digits > 15:
		return p.errf("integer with more than 15 digits")
	case dot && (frac == 0 || frac > 3):
		return p.errf("decimal needs 1 to 3 fractional digits")
	}
	return nil
}

func (p *sfParser) str() error {
	p.i++ // "
	for !p.done() {
		c := p.s[p.i]
		p.i++
		switch {
		case c == '\\':
			if p.done() || (p.s[p.i] != '"' && p.s[p.i] != '\\') {
				return p.errf("bad escape in a string")
			}
			p.i++
		case c == '"':
			return nil
		case c < 0x20 || c > 0x7e:
			return p.errf("byte %#x in a string", c)
		}
	}
	return p.errf("unterminated string")
}

func isLCAlpha(c byte) bool { return c >= 'a' && c <= 'z' }
func isAlpha(c byte) bool   { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool   { return c >= '0' && c <= '9' }

// isTchar tells whether c is an RFC 9110 tchar.
func isTchar(c byte) bool {
	return isAlpha(c) || isDigit(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// IsSFToken tells whether s may be written as an RFC 8941 Token.
func IsSFToken(s string) bool {
	if s == "" || !(isAlpha(s[0]) || s[0] == '*') {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isTchar(s[i]) && s[i] != ':' && s[i] != '/' {
			return false
		}
	}
	return true
}

// errSFName says what a cache name may hold.
var errSFName = errors.New("want printable ASCII (a token such as edgelimit, or any text in quotes)")

// SFNameItem returns the bare item that names a cache in Cache-Status: s
// itself when it is a Token, else s as an RFC 8941 String. It fails when
// s is empty or holds a byte a String cannot (controls, non-ASCII).
func SFNameItem(s string) (string, error) {
	if IsSFToken(s) {
		return s, nil
	}
	if s == "" {
		return "", errSFName
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			return "", errSFName
		}
		if c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String(), nil
}
