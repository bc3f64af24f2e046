// Package httpval reads request header values as an upstream acts on them,
// so that the limiter's keys and the cache's keys count one credential
// once, however the client writes it.
package httpval

import "net/http"

// First is the first value of the header name (canonical), without the
// whitespace around it: what Go's Header.Get and most frameworks read. A
// second header of the same name, or spaces and tabs around the value
// (which HTTP/2 passes through as they are), make no other value. The
// scheme of Authorization and Proxy-Authorization is written one way (see
// Credentials).
func First(h http.Header, name string) string {
	vs := h[name]
	if len(vs) == 0 {
		return ""
	}
	// The usual value, in the fewest steps (the Traefik plugin runs this
	// in an interpreter): no space around it, not a credential.
	if v := vs[0]; v != "" && v[0] > ' ' && v[len(v)-1] > ' ' && name[0] != 'A' && name[0] != 'P' {
		return v
	}
	return first(vs[0], name)
}

// first is First for a value with space around it, or a credential.
func first(v, name string) string {
	v = Trim(v)
	if name == "Authorization" || name == "Proxy-Authorization" {
		return Credentials(v)
	}
	return v
}

// Trim removes the spaces and tabs around v (HTTP's optional whitespace);
// it allocates nothing.
func Trim(v string) string {
	i, j := 0, len(v)
	for i < j && (v[i] == ' ' || v[i] == '\t') {
		i++
	}
	for j > i && (v[j-1] == ' ' || v[j-1] == '\t') {
		j--
	}
	return v[i:j]
}

// Credentials writes the auth scheme of a credentials value (RFC 9110,
// 11.4: case-insensitive) with an upper-case first letter and the rest
// lower case, followed by one space instead of any run of spaces and tabs:
// "bAsIc \tdXNlcg==" is "Basic dXNlcg==". A Basic token is written as
// standard base64 of what it decodes to (see basicToken): "Basic dXNlcg"
// and "Basic dXNlch==" are "Basic dXNlcg==" too. It allocates only when v is
// not written so already.
func Credentials(v string) string {
	end := 0
	for end < len(v) && v[end] != ' ' && v[end] != '\t' {
		end++
	}
	scheme := v[:end]
	rest := v[end:]
	params := rest
	for len(params) > 0 && (params[0] == ' ' || params[0] == '\t') {
		params = params[1:]
	}
	oneSpace := len(rest) == 0 || len(rest)-len(params) == 1 && rest[0] == ' '
	if len(scheme) == 5 && len(params) > 0 && (scheme[0]|0x20) == 'b' && (scheme[1]|0x20) == 'a' && (scheme[2]|0x20) == 's' && (scheme[3]|0x20) == 'i' && (scheme[4]|0x20) == 'c' {
		if token := basicToken(params); len(token) != len(params) || token != params {
			return "Basic " + token
		}
	}
	if canonicalScheme(scheme) && oneSpace {
		return v
	}
	b := make([]byte, 0, len(scheme)+1+len(params))
	for i := 0; i < len(scheme); i++ {
		c := scheme[i]
		if i == 0 && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if i > 0 && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	if len(rest) > 0 {
		b = append(b, ' ')
		b = append(b, params...)
	}
	return string(b)
}

func canonicalScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if i == 0 && 'a' <= c && c <= 'z' || i > 0 && 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}
