// Package access owns who may do what on a site: the permissions (DESIGN.md §9), the
// built-in and custom roles that bundle them, the users who act as helpers and
// administrators, and the assignments that give a user a role over device groups
// (scopes; none means every device). Its tables live in the site database.
//
// A permission implies others (Unattended => Elevation => FullControl => ViewScreen), and
// a Set is always read through those implications. Permissions that act on a device
// (the remote ones, ReadDevices, ManageDevices) follow the scopes of the assignment that
// grants them; the others act on the site as a whole and come only from an assignment
// without scopes, so a role over one group can never manage the PKI or grant access.
//
// The servers ask Grants for a user and check each request with Allows or OnDevice, in
// one place per server.
package access
