//! Attacks and faults, each reproduced as its attacker or outage would cause it, with the
//! behaviour that must hold instead (SECURITY.md has the threat model). One module per
//! attack surface; bodies that touch storage run on SQLite and PostgreSQL.

mod capture;
mod connect_links;
mod dashboard;
mod fanout;
mod faults;
mod forwarded_headers;
mod legacy_endpoint;
mod limits;
mod origin;
mod refresh;
mod roles;
mod sockets;
mod token_exchange;
