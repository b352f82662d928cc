package access

// Role is a named set of permissions that assignments give to users.
type Role struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Permissions Set    `json:"-"`
	BuiltIn     bool   `json:"built_in"`
}

// The built-in roles (DESIGN.md §9). They cannot be changed or deleted.
const (
	FullAdministrator    = "Full Administrator"
	PKIAdministrator     = "PKI Administrator"
	HelpDeskOperator     = "Help Desk Operator"
	ContentAdministrator = "Content Administrator"
	ReadOnlyAnalyst      = "Read-only Analyst"
)

// BuiltInRoles are the roles every site has.
var BuiltInRoles = []Role{
	{Name: FullAdministrator, Description: "every permission", Permissions: AllPermissions, BuiltIn: true},
	{Name: PKIAdministrator, Description: "certificates, tokens and revocation", Permissions: SetOf(ManagePKI), BuiltIn: true},
	{Name: HelpDeskOperator, Description: "every kind of remote session, and reading devices",
		Permissions: SetOf(Unattended, OfferRemoteAssistance, ReadDevices), BuiltIn: true},
	{Name: ContentAdministrator, Description: "content, distribution and deployments", Permissions: SetOf(ManageContent), BuiltIn: true},
	{Name: ReadOnlyAnalyst, Description: "reading devices and the audit", Permissions: SetOf(ReadDevices, ReadAudit), BuiltIn: true},
}
