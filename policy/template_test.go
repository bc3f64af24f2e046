package policy

import (
	"encoding/json"
	"html"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzEscapers: an escaped value reads back as itself and cannot close
// its string or open markup.
func FuzzEscapers(f *testing.F) {
	for _, s := range []string{"", `"`, `\`, "'", "</script>", "a\u2028b\u2029", "\x00\x1f\x7f", "\xff\xfe", "é漢🙂", `&lt;`, "x onmouseover=alert(1)", `/;alert(1)//`, "*/alert(1)/*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// JSON reads each invalid byte as a replacement character.
		var b strings.Builder
		for i := 0; i < len(s); {
			r, n := utf8.DecodeRuneInString(s[i:])
			b.WriteRune(r)
			i += n
		}
		valid := b.String()
		j := appendJSON(nil, s)
		var back string
		if err := json.Unmarshal([]byte(`"`+string(j)+`"`), &back); err != nil || back != valid {
			t.Fatalf("JSON %q: %q, %v; want %q", j, back, err, valid)
		}
		if strings.ContainsAny(string(j), "<>&\u2028\u2029") {
			t.Fatalf("JSON %q holds a character a script element reads", j)
		}
		js := appendJS(nil, s)
		if strings.ContainsAny(string(js), "'`$/") || unescapedQuote(string(js)) {
			t.Fatalf("JS %q can close its string", js)
		}
		h := appendHTML(nil, s)
		// Nor end an unquoted attribute value, nor a string of a script
		// element (which decodes no references) by its quote or backslash.
		if strings.ContainsAny(string(h), "<>\"'`=+\\ \t\n\v\f\r") || html.UnescapeString(string(h)) != s {
			t.Fatalf("HTML %q", h)
		}
	})
}

// unescapedQuote reports a double quote not preceded by an odd number of
// backslashes.
func unescapedQuote(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '"' {
			continue
		}
		n := 0
		for j := i - 1; j >= 0 && s[j] == '\\'; j-- {
			n++
		}
		if n%2 == 0 {
			return true
		}
	}
	return false
}

// TestHumanSeconds: singular for one, plural otherwise, and never sooner
// than the truth (150 s is not "2 minutes").
func TestHumanSeconds(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 seconds", 1: "1 second", 5: "5 seconds", 59: "59 seconds", 60: "1 minute", 61: "1 minute 1 second",
		90: "1 minute 30 seconds", 120: "2 minutes", 150: "2 minutes 30 seconds", 3599: "59 minutes 59 seconds",
		3600: "1 hour", 3601: "1 hour 1 minute", 3660: "1 hour 1 minute", 7200: "2 hours", 86399: "24 hours",
		86400: "1 day", 90000: "1 day 1 hour", 172800: "2 days",
	} {
		if got := HumanSeconds(n); got != want {
			t.Errorf("HumanSeconds(%d) = %q, want %q", n, got, want)
		}
	}
	for n, want := range map[int64]string{0: "0 seconds", 1: "1 second", 2: "2 seconds", 3600: "3600 seconds"} {
		if got := plural(n, "second"); got != want {
			t.Errorf("plural(%d) = %q, want %q", n, got, want)
		}
	}
}
