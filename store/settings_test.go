package store

import (
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	if got := RedactURL("redis://u:secret@h:1/0"); strings.Contains(got, "secret") || !strings.Contains(got, "h:1") {
		t.Errorf("redacted %s", got)
	}
	if got := RedactURL("redis://u:sec%zzret@h:1/0"); strings.Contains(got, "sec") {
		t.Errorf("a malformed URL is shown: %s", got)
	}
	if _, err := ParseRedisURL("redis://u:sec%zzret@h:1/0"); err == nil || strings.Contains(err.Error(), "sec") {
		t.Errorf("malformed URL: %v", err)
	}
	if CheckPrefix("app:") != nil || CheckPrefix("a{b") == nil || CheckPrefix("a}") == nil {
		t.Error("CheckPrefix")
	}
}

func TestParseClock(t *testing.T) {
	for s, want := range map[string]bool{"": false, "server": false, "local": true} {
		if local, err := ParseClock(s); err != nil || local != want {
			t.Errorf("%q: %t %v", s, local, err)
		}
	}
	if _, err := ParseClock("atomic"); err == nil {
		t.Error("an unknown clock is accepted")
	}
}

// TestCheckAddr: one rule for an address at both edges; a URL written
// where an address goes never shows its password.
func TestCheckAddr(t *testing.T) {
	for a, want := range map[string]string{
		"127.0.0.1:6379":          "",
		"[::1]:7000":              "",
		"cache:6380":              "",
		":6379":                   `address ":6379": want host:port`,
		"cache":                   `address "cache": want host:port`,
		"cache:0":                 `bad port "0"`,
		"cache:http":              `bad port "http"`,
		"user:hunter2@cache:6379": "not shown",
	} {
		err := CheckAddr(a)
		if (err == nil) != (want == "") || err != nil && (!strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "hunter2")) {
			t.Errorf("%s: %v, want %q", a, err, want)
		}
	}
}
