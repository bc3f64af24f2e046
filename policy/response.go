package policy

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
)

// ResponseRule is a condition on a response, as the Traefik plugin's
// countResponses gives it: read as Caddy's response matcher
// (caddyhttp.ResponseMatcher, which the Caddy module's count_responses
// is) reads its own, so that one configuration counts the same responses
// at both edges.
type ResponseRule struct {
	// Statuses: the response has one of them (a code, or a class: 4 is
	// 4xx). None: any status.
	Statuses []int
	// Headers: the response has each header (canonical names) with a value
	// that matches one of its patterns: exact, "*" (any), "x*" (a prefix),
	// "*x" (a suffix), "*x*" (a part). A nil list wants the header absent.
	Headers map[string][]string
}

// ParseStatus reads a status of a rule: a code (100 to 599) or a class
// ("4xx", or the digit alone).
func ParseStatus(s string) (int, error) {
	s = strings.TrimSpace(s)
	if len(s) == 3 && strings.HasSuffix(s, "xx") {
		s = s[:1]
	}
	n, err := strconv.Atoi(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf("status %q: want a code such as 401, or a class such as 4xx", s)
	case n >= 1 && n <= 5 || n >= 100 && n <= 599:
		return n, nil
	}
	return 0, fmt.Errorf("status %q: want a code from 100 to 599, or a class from 1xx to 5xx", s)
}

// NewResponseRule reads a rule as the Traefik plugin's countResponses
// writes it: statuses as ParseStatus reads them, and headers from their
// names to a value pattern, "!Name" (with no pattern) for a header that
// must be absent.
func NewResponseRule(statuses []string, headers map[string]string) (*ResponseRule, error) {
	rule := &ResponseRule{}
	for _, s := range statuses {
		n, err := ParseStatus(s)
		if err != nil {
			return nil, err
		}
		rule.Statuses = append(rule.Statuses, n)
	}
	for name, pattern := range headers {
		absent := strings.HasPrefix(name, "!")
		name = textproto.CanonicalMIMEHeaderKey(strings.TrimPrefix(name, "!"))
		if rule.Headers == nil {
			rule.Headers = map[string][]string{}
		}
		switch {
		case absent && pattern != "":
			return nil, errors.New("headers: !" + name + " wants the header absent, and takes no value")
		case absent:
			rule.Headers[name] = nil
		default:
			rule.Headers[name] = []string{pattern}
		}
	}
	if err := CheckRule(rule); err != nil {
		return nil, err
	}
	return rule, nil
}

// CheckRule checks the statuses of a rule (ParseStatus's ranges).
func CheckRule(r *ResponseRule) error {
	for _, s := range r.Statuses {
		if _, err := ParseStatus(strconv.Itoa(s)); err != nil {
			return err
		}
	}
	for name, patterns := range r.Headers {
		if err := checkHeaderName(name); err != nil {
			return err
		}
		if patterns != nil && len(patterns) == 0 {
			return errors.New("header " + name + ": give a value pattern (\"*\" for any)")
		}
	}
	return nil
}

// ResponseMatcher is a condition on a response: the Traefik plugin's
// *ResponseRule, the Caddy module's caddyhttp.ResponseMatcher.
type ResponseMatcher interface {
	Match(status int, hdr http.Header) bool
}

// Match is MatchResponse, as a ResponseMatcher.
func (r *ResponseRule) Match(status int, hdr http.Header) bool { return MatchResponse(r, status, hdr) }

// MatchResponse tells whether a response of status with headers hdr meets
// the rule.
func MatchResponse(r *ResponseRule, status int, hdr http.Header) bool {
	if len(r.Statuses) > 0 && !matchStatus(r.Statuses, status) {
		return false
	}
	for name, patterns := range r.Headers {
		vals := hdr[name]
		if patterns == nil {
			if vals != nil {
				return false
			}
			continue
		}
		if !matchValues(vals, patterns) {
			return false
		}
	}
	return true
}

func matchStatus(statuses []int, status int) bool {
	for _, s := range statuses {
		if s == status || s < 100 && status >= s*100 && status < (s+1)*100 {
			return true
		}
	}
	return false
}

// matchValues tells whether one of vals matches one of patterns.
func matchValues(vals, patterns []string) bool {
	for _, v := range vals {
		for _, p := range patterns {
			if matchPattern(v, p) {
				return true
			}
		}
	}
	return false
}

func matchPattern(v, p string) bool {
	switch {
	case p == "*":
		return true
	case len(p) > 1 && p[0] == '*' && p[len(p)-1] == '*':
		return strings.Contains(v, p[1:len(p)-1])
	case p[0:1] == "*":
		return strings.HasSuffix(v, p[1:])
	case strings.HasSuffix(p, "*"):
		return strings.HasPrefix(v, p[:len(p)-1])
	}
	return v == p
}
