// Package zone names the state of one directive (route-scoped counters,
// cache entries) so that it survives reloads and is the same on every
// instance with the same configuration: a short hash of what the directive
// says, numbered when equal directives repeat in one Caddyfile.
package zone

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// Hash is a short hash of s: 12 hex digits.
func Hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:6])
}

// Of hashes v's JSON form.
func Of(v any) (string, error) {
	text, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	return Hash(string(text)), nil
}

// Default sets *z, when it is empty, to the zone Derive names for v.
func Default(state map[string]any, key string, v any, z *string) error {
	if *z != "" {
		return nil
	}
	name, err := Derive(state, key, v)
	*z = name
	return err
}

// Derive names the zone of a directive whose configuration is v, in the
// Caddyfile being adapted (state is the adapter's state, shared by the
// directives of one Caddyfile; key separates kinds of directives). The
// second directive with the same configuration gets "<hash>-2", and so on,
// in file order.
func Derive(state map[string]any, key string, v any) (string, error) {
	sum, err := Of(v)
	if err != nil {
		return "", err
	}
	seen, _ := state[key].(map[string]int)
	if seen == nil {
		seen = make(map[string]int)
		state[key] = seen
	}
	seen[sum]++
	if n := seen[sum]; n > 1 {
		return fmt.Sprintf("%s-%d", sum, n), nil
	}
	return sum, nil
}
