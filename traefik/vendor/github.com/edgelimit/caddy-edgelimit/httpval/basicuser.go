package httpval

import (
	"encoding/base64"
	"net/http"
	"strings"
)

// BasicUser is the user a request claims to be with Basic credentials in
// Authorization (its first value), before anyone checked the password:
// the key of a limit on failed logins per user. It is read as Go's
// Request.BasicAuth reads it (and with it Caddy's basic_auth and Traefik's
// basicAuth): base64 that decodes to user:password, the user before the
// first colon. Every value from which those read a user gives the same
// user here (the spaces around the value and the scheme's case aside, a
// few more values do, which those refuse without checking a password).
// "" when there are no Basic credentials.
func BasicUser(h http.Header) string {
	v, ok := strings.CutPrefix(First(h, "Authorization"), "Basic ")
	if !ok {
		return ""
	}
	dec, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return ""
	}
	user, _, ok := strings.Cut(string(dec), ":")
	if !ok {
		return ""
	}
	return user
}
