//! The PostgreSQL the store tests run against (issue 19): a real server
//! from Debian's `postgresql` package, made and run by the tests as an
//! unprivileged user. These tests hold the harness itself to what the
//! store will rely on; the store suite joins them when the PostgreSQL
//! backend lands.

mod support;

use support::*;

/// A committed row survives the server being stopped at once (what a
/// crash does to the process), and password auth is enforced over TCP.
#[test]
fn a_real_postgres_keeps_committed_rows_across_an_immediate_stop() {
    let pg = Postgres::start();
    assert!(pg.sql("SELECT version()").starts_with("PostgreSQL "));
    pg.sql("CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL)");
    pg.sql("INSERT INTO t VALUES (1, 'committed')");
    pg.restart();
    assert_eq!(pg.sql("SELECT v FROM t WHERE id = 1"), "committed");
    let wrong = pg
        .psql("not-the-password")
        .args(["-c", "SELECT 1"])
        .output()
        .expect("psql");
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(pg.url().starts_with("postgres://relay:"));
}
