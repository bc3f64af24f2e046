package store

import (
	"errors"
	"strconv"
	"strings"
)

// EvictionAdvice is the warning for a Redis whose memory policy can forget
// the counts of clients that used up their limits, or "" when it cannot:
// maxmemory is Redis's maxmemory (0: no bound) and policy its
// maxmemory-policy. With a bound and any policy but noeviction, a flood of
// made-up client keys fills Redis, which then evicts other keys to make
// room, exhausted clients' counters among them: those clients get their
// limits whole again. With noeviction Redis refuses the writes instead,
// and the stores still deny, from what Redis holds, the clients it holds
// as denied (Remote: a read-only decision).
func EvictionAdvice(maxmemory int64, policy string) string {
	if maxmemory <= 0 || policy == "" || policy == "noeviction" {
		return ""
	}
	return "Redis evicts keys when full (maxmemory " + strconv.FormatInt(maxmemory, 10) + ", maxmemory-policy " + policy +
		"): a flood of made-up client keys can evict the counters of clients that used up their limits, which then get them whole again; " +
		"set maxmemory-policy noeviction on a Redis that counts limits (when it is full, the clients it holds as denied are still denied)"
}

// InfoField is the value of field in the text of Redis's INFO reply
// ("field:value" lines), or "": for an edge whose client does not read
// INFO (the Traefik plugin's).
func InfoField(info, field string) string {
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSuffix(line, "\r"), ":"); ok && k == field {
			return v
		}
	}
	return ""
}

// IsOOM tells whether err is Redis refusing a write at its maxmemory
// ("OOM command not allowed when used memory > 'maxmemory'", raised by a
// script's first write: the script wrote nothing), or ErrFull.
func IsOOM(err error) bool {
	return err != nil && (err == ErrFull || strings.Contains(err.Error(), "OOM command not allowed"))
}

// ErrFull is the answer of a Redis at its maxmemory that refuses writes
// (maxmemory-policy noeviction): the take script decided from the counts
// Redis holds, and counted nothing. The results hold those decisions: a
// client Redis holds as exhausted is denied exactly; the others are
// decided by the failure policy (Remote). Returned as is, never wrapped.
var ErrFull = errors.New("OOM command not allowed when used memory > 'maxmemory': redis is full, decided from the counts it holds and counted nothing")

// FullReply recognizes the take script's reply when Redis refused its
// writes: "F" and the decisions. It returns the decisions.
func FullReply(reply string) (string, bool) {
	if len(reply) > 0 && reply[0] == 'F' {
		return reply[1:], true
	}
	return reply, false
}

// FullWarning is the log line of a Redis that refuses writes (at most one
// per WarnInterval).
const FullWarning = "redis rate-limit storage is full (OOM at maxmemory): clients it holds as exhausted are still denied, the others are decided by on_error until it has room; " +
	"give Redis more memory (see docs/storage.md, Memory and key floods)"
