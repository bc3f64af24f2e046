package httpval

import "encoding/base64"

// basicDecoders are the spellings of a Basic token that upstreams decode
// to one user-pass: Go's net/http (and Caddy's basic_auth) take standard
// base64 with its padding and ignore the bits after the last byte, so that
// 16 spellings of most credentials authenticate alike; others also take the
// padding left out, or the URL-safe alphabet. Counting every spelling
// that decodes as the one standard spelling of what it decodes to can only
// join an attacker's own spellings, never two users.
var basicDecoders = []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding}

// basicToken is a Basic token written as standard base64 with padding and
// zero trailing bits: the token itself when it is written so (without
// allocating, for tokens of up to 128 characters), else the token that
// decodes to the same bytes. A token that no decoder takes is left as it
// is: no upstream accepts it either.
func basicToken(token string) string {
	if len(token) > 128 {
		return basicLong(token)
	}
	var src [128]byte
	var raw [96]byte
	var std [128]byte
	n := copy(src[:], token)
	for _, e := range basicDecoders {
		m, err := e.Decode(raw[:], src[:n])
		if err != nil {
			continue
		}
		k := base64.StdEncoding.EncodedLen(m)
		base64.StdEncoding.Encode(std[:], raw[:m])
		if string(std[:k]) == token {
			return token
		}
		return string(std[:k])
	}
	return token
}

// basicLong is basicToken for long tokens.
func basicLong(token string) string {
	for _, e := range basicDecoders {
		if raw, err := e.DecodeString(token); err == nil {
			return base64.StdEncoding.EncodeToString(raw)
		}
	}
	return token
}
