package policy

import "testing"

func TestNearest(t *testing.T) {
	names := []string{"algorithm", "status", "onError", "window", "limit"}
	for word, want := range map[string]string{"algoritm": "algorithm", "stauts": "status", "onEror": "onError", "ONERROR": "onError",
		"windw": "window", "limits": "limit", "zzz": "", "": "", "cost": ""} {
		if got := Nearest(word, names); got != want {
			t.Errorf("Nearest(%q) = %q, want %q", word, got, want)
		}
	}
}
