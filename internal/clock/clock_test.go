package clock

import (
	"testing"
	"time"
)

func TestParseTestBase(t *testing.T) {
	// ParseTestBase takes "now" as an argument: a fixed one holds on any date.
	now := time.Date(2026, 11, 29, 8, 46, 0, 0, time.UTC)
	for v, want := range map[string]string{
		"":                          "2026-11-30T10:00:00Z",
		"-8760h":                    "2025-11-30T10:00:00Z",
		"+8760h":                    "2027-11-30T10:00:00Z",
		"90m":                       "2026-11-30T12:00:00Z",
		"2027-03-31T23:59:58Z":      "2027-04-01T00:00:00Z",
		"2027-03-31T22:00:00+02:00": "2027-03-31T20:00:00Z",
	} {
		got, err := ParseTestBase(v, now)
		if err != nil || got.Format(time.RFC3339) != want {
			t.Errorf("ParseTestBase(%q) = %s, %v; want %s", v, got.Format(time.RFC3339), err, want)
		}
	}
	if _, err := ParseTestBase("next tuesday", now); err == nil {
		t.Error("a bad value is accepted")
	}
}

func TestProvisionSeesInstalledFake(t *testing.T) {
	if ForProvision() != Real || ID(Real) != "real" {
		t.Fatal("the default clock is not the real one")
	}
	f := NewFake(time.Unix(1e9, 0))
	restore := Install(f)
	if ForProvision() != Clock(f) || ID(f) == ID(Real) {
		t.Fatal("an installed fake is not provisioned")
	}
	f.Add(time.Second)
	if f.Now() != time.Unix(1e9+1, 0) {
		t.Fatal("Add")
	}
	restore()
	if ForProvision() != Real {
		t.Fatal("restore left the fake installed")
	}
}
