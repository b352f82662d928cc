package client

import "testing"

// TestServerErrorNamesWhoAnswered: an MP's refusal must not read as the CA's.
func TestServerErrorNamesWhoAnswered(t *testing.T) {
	cases := []struct {
		name string
		err  *ServerError
		want string
	}{
		{"the CA", &ServerError{Status: 409, Code: "token_used", Message: "used"}, "the CA refused the request (HTTP 409, token_used): used"},
		{"an MP", &ServerError{Status: 403, Code: "certificate_superseded", Message: "renewed", Server: ManagementPoint},
			"the management point refused the request (HTTP 403, certificate_superseded): renewed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.want {
				t.Errorf("Error() = %q, want %q", got, tc.want)
			}
		})
	}
}
