//! `cairn user ...`, `cairn token ...` and `cairn whoami`: users, passwords
//! and bearer tokens through `cairn.v1.Users`. Output is one JSON line per
//! user or token, like the other client commands.
//!
//! Passwords of these commands (`--new-password`, `--current-password`)
//! come from the flag, its `CAIRN_*` variable, or standard input: a prompt
//! without echo on a terminal (asked twice for a new password), one line
//! otherwise (`echo "$PW" | cairn user add bob`). They never appear in
//! output. The connection's own `--user`/`--password`/`--token` are the
//! global flags of `commands::ConnectArgs`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_client::{NewToken, NewUser, TokenDetails, UserDetails, UserUpdate};
use cairn_server::Secret;
use clap::Subcommand;
use serde::Serialize;

use crate::commands::ConnectArgs;

/// `cairn user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (admin).
    Add {
        /// The user name.
        name: String,
        /// Full name or description.
        #[arg(long, default_value = "")]
        full_name: String,
        /// A role: admin or ops (repeatable; none: a plain user).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Its password [default: prompted, or read from standard input].
        #[arg(long, env = "CAIRN_NEW_PASSWORD", hide_env_values = true)]
        new_password: Option<Secret>,
    },
    /// Delete a user and its tokens (admin).
    Delete {
        /// The user name.
        name: String,
    },
    /// Disable a user: its password and tokens stop working (admin).
    Disable {
        /// The user name.
        name: String,
    },
    /// Enable a disabled user (admin).
    Enable {
        /// The user name.
        name: String,
    },
    /// Change a user's full name or roles (admin).
    Update {
        /// The user name.
        name: String,
        /// The new full name.
        #[arg(long)]
        full_name: Option<String>,
        /// The new roles, replacing the old (repeatable: admin, ops).
        #[arg(long = "role", conflicts_with = "no_roles")]
        roles: Vec<String>,
        /// Take every role away (a plain user).
        #[arg(long)]
        no_roles: bool,
    },
    /// Change your own password.
    Passwd {
        /// The user [default: --user, else who the server takes you for].
        name: Option<String>,
        /// The current password [default: --password, else prompted].
        #[arg(long, env = "CAIRN_CURRENT_PASSWORD", hide_env_values = true)]
        current_password: Option<Secret>,
        /// The new password [default: prompted, or read from standard input].
        #[arg(long, env = "CAIRN_NEW_PASSWORD", hide_env_values = true)]
        new_password: Option<Secret>,
    },
    /// Set a user's password without the current one (admin).
    ResetPassword {
        /// The user name.
        name: String,
        /// The new password [default: prompted, or read from standard input].
        #[arg(long, env = "CAIRN_NEW_PASSWORD", hide_env_values = true)]
        new_password: Option<Secret>,
    },
    /// List every user (admin).
    List,
    /// Show one user (admin, or yourself).
    Show {
        /// The user name.
        name: String,
    },
}

/// `cairn token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bearer token and print it; it is shown this once.
    Create {
        /// Whose token [default: yours]; admins may name anyone.
        #[arg(long = "for")]
        user: Option<String>,
        /// A name or description (e.g. the service that uses it).
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime: a number with s, m, h or d (e.g. 90d) [default: until revoked].
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List tokens (never their secrets): yours, another user's (--for), or
    /// every token for an admin.
    List {
        /// Whose tokens.
        #[arg(long = "for")]
        user: Option<String>,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token's id (from `token create` or `token list`).
        id: String,
    },
}

/// Parses `30s`, `15m`, `12h`, `90d` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 30s, 15m, 12h or 90d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return Err(format!("'{text}': use s, m, h or d")),
    };
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is too long"))
}

/// A user as printed.
#[derive(Serialize)]
struct UserLine<'a> {
    user: &'a str,
    full_name: &'a str,
    roles: &'a [String],
    disabled: bool,
    created: u64,
    updated: u64,
}

/// A token as printed (`secret` only right after `token create`).
#[derive(Serialize)]
struct TokenLine<'a> {
    id: &'a str,
    user: &'a str,
    name: &'a str,
    created: u64,
    expires: Option<u64>,
    expired: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
}

/// Seconds since the Unix epoch.
fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn print_user(user: &UserDetails) -> Result<(), Box<dyn std::error::Error>> {
    print_json(&UserLine {
        user: &user.user,
        full_name: &user.full_name,
        roles: &user.roles,
        disabled: user.disabled,
        created: unix(user.created),
        updated: unix(user.updated),
    })
}

fn print_token(
    token: &TokenDetails,
    secret: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    print_json(&TokenLine {
        id: &token.id,
        user: &token.user,
        name: &token.name,
        created: unix(token.created),
        expires: token.expires.map(unix),
        expired: token.expired,
        secret,
    })
}

fn print_json(value: &impl Serialize) -> Result<(), Box<dyn std::error::Error>> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Runs `cairn user ...`.
pub async fn run_user(
    command: UserCommand,
    connect: &ConnectArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = connect.client().await?;
    match command {
        UserCommand::Add {
            name,
            full_name,
            roles,
            new_password,
        } => {
            let password = new_password_of(new_password, &name)?;
            let user = client
                .create_user(
                    NewUser::new(name, password)
                        .full_name(full_name)
                        .roles(roles),
                )
                .await?;
            print_user(&user)
        }
        UserCommand::Delete { name } => {
            client.delete_user(&name).await?;
            print_json(&serde_json::json!({"deleted": name}))
        }
        UserCommand::Disable { name } => {
            client.disable_user(&name).await?;
            print_json(&serde_json::json!({"disabled": name}))
        }
        UserCommand::Enable { name } => {
            client.enable_user(&name).await?;
            print_json(&serde_json::json!({"enabled": name}))
        }
        UserCommand::Update {
            name,
            full_name,
            roles,
            no_roles,
        } => {
            let roles = if no_roles {
                Some(Vec::new())
            } else {
                (!roles.is_empty()).then_some(roles)
            };
            if full_name.is_none() && roles.is_none() {
                return Err("nothing to change: give --full-name, --role or --no-roles".into());
            }
            let user = client
                .update_user(&name, UserUpdate { full_name, roles })
                .await?;
            print_user(&user)
        }
        UserCommand::Passwd {
            name,
            current_password,
            new_password,
        } => {
            let name = match name.or_else(|| connect.user.clone()) {
                Some(name) => name,
                None => client.whoami().await?.user,
            };
            let current = match current_password.or_else(|| connect.password.clone()) {
                Some(current) => current.expose().to_owned(),
                None => read_secret(&format!("Current password of {name}: "), false)?,
            };
            let new = new_password_of(new_password, &name)?;
            client.change_password(&name, current, new).await?;
            eprintln!("password of {name} changed; log in with the new one from now on");
            print_json(&serde_json::json!({"password_changed": name}))
        }
        UserCommand::ResetPassword { name, new_password } => {
            let new = new_password_of(new_password, &name)?;
            client.reset_password(&name, new).await?;
            print_json(&serde_json::json!({"password_reset": name}))
        }
        UserCommand::List => {
            for user in client.list_users().await? {
                print_user(&user)?;
            }
            Ok(())
        }
        UserCommand::Show { name } => print_user(&client.user_details(name).await?),
    }
}

/// Runs `cairn token ...`.
pub async fn run_token(
    command: TokenCommand,
    connect: &ConnectArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = connect.client().await?;
    match command {
        TokenCommand::Create {
            user,
            name,
            expires_in,
        } => {
            let token = client
                .create_token(NewToken {
                    user,
                    name,
                    expires_in,
                })
                .await?;
            eprintln!(
                "store the secret now: it is not shown again (use it with --token or CAIRN_TOKEN)"
            );
            print_token(&token.details, Some(&token.secret))
        }
        TokenCommand::List { user } => {
            for token in client.list_tokens(user.as_deref()).await? {
                print_token(&token, None)?;
            }
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            client.revoke_token(&id).await?;
            print_json(&serde_json::json!({"revoked": id}))
        }
    }
}

/// Runs `cairn whoami`.
pub async fn run_whoami(connect: &ConnectArgs) -> Result<(), Box<dyn std::error::Error>> {
    let me = connect.client().await?.whoami().await?;
    print_json(&serde_json::json!({"user": me.user, "roles": me.roles, "system": me.system}))
}

/// A new password: the flag or its variable, else from standard input.
fn new_password_of(
    given: Option<Secret>,
    user: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    match given {
        Some(password) => Ok(password.expose().to_owned()),
        None => read_secret(&format!("New password for {user}: "), true),
    }
}

/// Reads a secret from standard input: on a terminal with a prompt on
/// standard error and without echo (twice when `confirm`), else one line.
fn read_secret(prompt: &str, confirm: bool) -> Result<String, Box<dyn std::error::Error>> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        let secret = line.trim_end_matches(['\r', '\n']).to_owned();
        if secret.is_empty() {
            return Err(
                "no password given: use the flag, its CAIRN_* variable, or standard input".into(),
            );
        }
        return Ok(secret);
    }
    let first = prompt_hidden(prompt)?;
    if confirm && prompt_hidden("Again: ")? != first {
        return Err("the passwords differ; nothing was changed".into());
    }
    Ok(first)
}

/// Prompts on the terminal with echo off (`stty -echo`, restored on every
/// way out of this function).
fn prompt_hidden(prompt: &str) -> Result<String, Box<dyn std::error::Error>> {
    struct Echo;
    impl Echo {
        fn set(on: bool) -> std::io::Result<()> {
            std::process::Command::new("stty")
                .arg(if on { "echo" } else { "-echo" })
                .stdin(std::process::Stdio::inherit())
                .status()
                .map(|_| ())
        }
    }
    impl Drop for Echo {
        fn drop(&mut self) {
            let _ = Echo::set(true);
            eprintln!();
        }
    }
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    Echo::set(false)?;
    let _restore = Echo;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
