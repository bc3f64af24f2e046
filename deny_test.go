package edgelimit

import (
	"encoding/json"
	"testing"
)

func TestHandleErrorsRendersDenial(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit tight {
			rate 1/1m
		}
		handle_errors
	}
	respond "ok"
	handle_errors 429 {
		respond "slow down: {edge_limit.name} for {edge_limit.retry_after}s ({err.status_code})" 429
	}
}`)
	expect(t, s.get("/"), 200)
	r := s.get("/")
	expect(t, r, 429, "Retry-After", "60", "X-RateLimit-Remaining", "0", "body", "slow down: tight for 60s (429)")
}

func TestCustomBodyEscapesPlaceholders(t *testing.T) {
	fakeClock(t)
	s := startSite(t, "%ADDR% {\n\tedge_limit {\n\t\tlimit x {\n\t\t\trate 1/1m\n\t\t}\n\t\tbody `{\"error\":\"rate_limit_reached\",\"path\":\"{http.request.uri.path}\",\"ua\":\"{http.request.header.User-Agent}\"}`\n\t}\n\trespond \"ok\"\n}")
	expect(t, s.get("/p"), 200)
	r := s.get("/p", "User-Agent", `evil","admin":true,"x":"`)
	if r.status != 429 {
		t.Fatalf("status %d", r.status)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(r.body), &v); err != nil {
		t.Fatalf("body %q is not JSON: %v", r.body, err)
	}
	if v["error"] != "rate_limit_reached" || v["path"] != "/p" || v["ua"] != `evil","admin":true,"x":"` || v["admin"] != nil {
		t.Fatalf("body %q decoded as %v", r.body, v)
	}
}

func TestCompileTemplate(t *testing.T) {
	cases := map[string]string{
		`{"status":{edge_limit.status}}`:   `\{"status":{edge_limit.status}\}`,
		`{ "a": {http.request.uri.path} }`: `\{ "a": {http.request.uri.path} \}`,
		`\{literal\}`:                      `\{literal\}`,
		`{}`:                               `\{\}`,
		`{file./etc/x}`:                    `{file./etc/x}`,
		`{1bad}`:                           `\{1bad\}`,
	}
	for in, want := range cases {
		if got := compileTemplate(in); got != want {
			t.Errorf("compileTemplate(%q) = %q, want %q", in, got, want)
		}
	}
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
		if got := humanSeconds(n); got != want {
			t.Errorf("humanSeconds(%d) = %q, want %q", n, got, want)
		}
	}
	for n, want := range map[int64]string{0: "0 seconds", 1: "1 second", 2: "2 seconds", 3600: "3600 seconds"} {
		if got := secondsText(n); got != want {
			t.Errorf("secondsText(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestHTMLBodyEscapesPlaceholders: a text/html denial body reflected a
// request header as markup; values are escaped for the body's type.
func TestHTMLBodyEscapesPlaceholders(t *testing.T) {
	fakeClock(t)
	s := startSite(t, "%ADDR% {\n\tedge_limit {\n\t\tlimit x {\n\t\t\trate 1/1m\n\t\t}\n\t\tcontent_type \"text/html; charset=utf-8\"\n\t\tbody \"<p>Slow down, {http.request.header.User-Agent}</p>\"\n\t}\n\trespond \"ok\"\n}")
	expect(t, s.get("/"), 200)
	r := s.get("/", "User-Agent", `<script>alert("x")</script>`)
	expect(t, r, 429, "Content-Type", "text/html; charset=utf-8",
		"body", `<p>Slow down, &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;</p>`)
}

// TestJavaScriptBodyEscapesPlaceholders: a value in a JavaScript body
// cannot leave its string, in either quotes.
func TestJavaScriptBodyEscapesPlaceholders(t *testing.T) {
	fakeClock(t)
	s := startSite(t, "%ADDR% {\n\tedge_limit {\n\t\tlimit x {\n\t\t\trate 1/1m\n\t\t}\n\t\tcontent_type application/javascript\n\t\tbody \"report('{http.request.header.User-Agent}', \\\"{http.request.header.User-Agent}\\\")\"\n\t}\n\trespond \"ok\"\n}")
	expect(t, s.get("/"), 200)
	expect(t, s.get("/", "User-Agent", `x');alert(1);("`), 429,
		"body", `report('x\u0027);alert(1);(\"', "x\u0027);alert(1);(\"")`)
}
