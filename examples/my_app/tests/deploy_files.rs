//! Consistency checks for the files baked into the VM image.

use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const SOCKET: &str = "/run/my_app/my_app.sock";

#[test]
fn systemd_unit_has_the_expected_settings() {
    let unit = read("my_app.service");
    for line in [
        "[Unit]",
        "After=network.target",
        "[Service]",
        "User=www-data",
        "Group=www-data",
        "RuntimeDirectory=my_app",
        "EnvironmentFile=-/etc/scaleset/instance.env",
        "WorkingDirectory=/var/www/html/my_app",
        "ExecStart=/var/www/html/my_app/my_app --socket /run/my_app/my_app.sock",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "Restart=on-failure",
        "[Install]",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l.trim() == line), "missing {line:?}");
    }
    assert!(unit.lines().any(|l| l.starts_with("Description=")));
}

#[test]
fn nginx_site_proxies_to_the_app_socket() {
    let site = read("nginx/my_app");
    assert!(site.contains(&format!("server unix:{SOCKET};")));
    assert!(site.contains("keepalive 32;"));
    assert!(site.contains("listen 80 default_server;"));
    assert!(site.contains("server_name _;"));
    assert!(site.contains("proxy_pass http://my_app;"));
    assert!(site.contains("proxy_http_version 1.1;"));
    assert!(site.contains("proxy_set_header Connection \"\";"));
    assert!(site.contains("proxy_set_header Host $host;"));
    assert!(site.contains("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"));
    assert_eq!(site.matches('{').count(), site.matches('}').count());
}

#[test]
fn setupscript_installs_the_drop() {
    let script = read("setupscript.sh");
    assert!(script.starts_with("#!/bin/bash\n"));
    assert!(!script.contains("set -e"));
    for needle in [
        "sudo apt-get update",
        "sudo apt-get install -y nginx",
        "cd \"$(dirname \"$0\")\"",
        "sudo mkdir -p /var/www/html/my_app",
        "sudo cp my_app /var/www/html/my_app/my_app",
        "sudo chmod 755 /var/www/html/my_app/my_app",
        "sudo cp my_app.service /etc/systemd/system/my_app.service",
        "sudo systemctl enable my_app",
        "sudo cp nginx/my_app /etc/nginx/sites-available/my_app",
        "sudo ln -sf /etc/nginx/sites-available/my_app /etc/nginx/sites-enabled/my_app",
        "sudo rm -f /etc/nginx/sites-enabled/default",
        "sudo systemctl enable nginx",
        "sudo systemctl restart nginx",
    ] {
        assert!(script.contains(needle), "missing {needle:?}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("setupscript.sh");
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "setupscript.sh is executable");
    }
}
