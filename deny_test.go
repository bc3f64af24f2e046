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

// TestJavaScriptBodyEscapesTemplateLiterals: a JavaScript denial body with
// a placeholder inside backticks let ` and ${ through, so that a header
// echoed in the body ended the template literal or ran code in it. Every
// JavaScript string context is escaped: quotes, backticks, and the $ of ${.
func TestJavaScriptBodyEscapesTemplateLiterals(t *testing.T) {
	fakeClock(t)
	s := startSite(t, "%ADDR% {\n\tedge_limit {\n\t\tlimit x {\n\t\t\trate 1/1m\n\t\t}\n\t\tbody <<JS\n\t\t\tshow(`Slow down, {http.request.header.X-Name}`);\n\t\t\tJS\n\t\tcontent_type text/javascript\n\t}\n\trespond \"ok\"\n}")
	expect(t, s.get("/"), 200)
	r := s.get("/", "X-Name", "`+alert(1)+`${alert(2)}'\"")
	want := "show(`Slow down, \\u0060+alert(1)+\\u0060\\u0024{alert(2)}\\u0027\\\"`);"
	expect(t, r, 429, "body", want)
}

// TestHTMLBodyEscapesEveryContext: an HTML denial body escaped a value for
// text and quoted attributes only: in an unquoted attribute a space and =
// added an event handler (<a title={X}> with "x onmouseover=alert(1)"), and
// in a script element, which decodes no references, a backslash escaped
// the template's closing quote so that the next placeholder ran as code.
// A JavaScript body's value ended a regular expression literal with /.
// Every such character is written as a reference (an escape in
// JavaScript), which renders as itself.
func TestHTMLBodyEscapesEveryContext(t *testing.T) {
	fakeClock(t)
	s := startSite(t, "%ADDR% {\n\tedge_limit {\n\t\tlimit x {\n\t\t\trate 1/1m\n\t\t}\n\t\tbody <<HTML\n\t\t\t<a title={http.request.header.X-A}>back</a><script>var a=\"{http.request.header.X-B}\", b=\"{http.request.header.X-A}\";</script>\n\t\t\tHTML\n\t\tcontent_type \"text/html; charset=utf-8\"\n\t}\n\trespond \"ok\"\n}")
	expect(t, s.get("/"), 200)
	r := s.get("/", "X-A", "x onmouseover=alert(1)//", "X-B", `\`)
	want := `<a title=x&#32;onmouseover&#61;alert(1)//>back</a><script>var a="&#92;", b="x&#32;onmouseover&#61;alert(1)//";</script>`
	expect(t, r, 429, "body", want)

	js := startSite(t, "%ADDR% {\n\tedge_limit {\n\t\tlimit y {\n\t\t\trate 1/1m\n\t\t}\n\t\tbody <<JS\n\t\t\tif (/{http.request.header.X-A}/.test(location)) retry();\n\t\t\tJS\n\t\tcontent_type text/javascript\n\t}\n\trespond \"ok\"\n}")
	expect(t, js.get("/"), 200)
	r = js.get("/", "X-A", "x/.test(alert(1))||/")
	expect(t, r, 429, "body", `if (/x\u002f.test(alert(1))||\u002f/.test(location)) retry();`)
}
