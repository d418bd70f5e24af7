//! `cairn cluster status`: how the node `--addr` names sees the cluster,
//! through `cairn.v1.Cluster` (admin only). Prints `key value` lines for
//! the node (as `cairn info` does), then the members as a table.
//!
//! This module owns the `cluster` subcommand's arguments and output; it must
//! not declare connection options (they are the global `ConnectArgs`).
//! `commands::Command::Cluster` parses it and dispatches here.

use cairn_client::{ClusterMember, ClusterMemberKind, ClusterRole, ClusterStatus, NewClusterNode};
use clap::Subcommand;

use crate::commands::ConnectArgs;

/// What `cairn cluster` does.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ClusterCommand {
    /// Show how the node sees the cluster: its role, term, leader, raft log
    /// and applied position, and the members (raft and client addresses,
    /// and on the leader each follower's matched log index and lag). A
    /// single node answers role single-node (admin).
    Status,
    /// Add a node (started with --cluster-join) through the leader: it
    /// catches up as a learner, then votes. Prints the new membership (admin).
    Add {
        /// Its --cluster-node-id.
        #[arg(long)]
        node_id: u64,
        /// HOST:PORT of its raft listener (--cluster-listen as peers reach it).
        #[arg(long)]
        raft: String,
        /// HOST:PORT of its client listener.
        #[arg(long)]
        client: String,
        /// HOST:PORT of its KurrentDB facade, if it serves one.
        #[arg(long)]
        kurrent: Option<String>,
    },
    /// Remove a node through the leader (not the last voter). Prints the
    /// new membership (admin).
    Remove {
        /// Its node id.
        #[arg(long)]
        node_id: u64,
    },
}

/// Runs `cairn cluster ...`.
pub async fn run_cluster(
    command: ClusterCommand,
    connect: &ConnectArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        ClusterCommand::Status => {
            let client = connect.client().await?;
            let status = client.cluster_status().await?;
            print!("{}", render_status(&status));
            Ok(())
        }
        ClusterCommand::Add {
            node_id,
            raft,
            client: client_address,
            kurrent,
        } => {
            let client = connect.client().await?;
            let members = client
                .add_cluster_node(NewClusterNode {
                    node_id,
                    raft_address: raft,
                    client_address,
                    kurrent_address: kurrent,
                })
                .await?;
            print!("{}", render_members(&members));
            Ok(())
        }
        ClusterCommand::Remove { node_id } => {
            let client = connect.client().await?;
            let members = client.remove_cluster_node(node_id).await?;
            print!("{}", render_members(&members));
            Ok(())
        }
    }
}

/// The membership after a change: one `ID KIND RAFT CLIENT` row per member
/// under a header, columns aligned.
fn render_members(members: &[ClusterMember]) -> String {
    let header = ["ID", "KIND", "RAFT", "CLIENT"].map(str::to_owned);
    let rows: Vec<[String; 4]> = std::iter::once(header)
        .chain(members.iter().map(|member| {
            [
                member.id.to_string(),
                member.kind.as_str().to_owned(),
                or_dash(member.raft_address.as_deref()),
                or_dash(member.client_address.as_deref()),
            ]
        }))
        .collect();
    aligned(&rows)
}

/// `rows` (the header first) as lines of columns padded to the widest cell
/// and two spaces apart; the last column is not padded.
fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `value`, or `-` when unknown.
fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

/// A member's role as the answering node sees it: its own role for itself;
/// for the others, `leader` for the leader it knows, else what their kind
/// makes them (a voter follows, a learner learns).
fn member_role(status: &ClusterStatus, member: &ClusterMember) -> &'static str {
    if member.id == status.node_id {
        status.role.as_str()
    } else if Some(member.id) == status.leader_id {
        ClusterRole::Leader.as_str()
    } else {
        match member.kind {
            ClusterMemberKind::Voter => ClusterRole::Follower.as_str(),
            ClusterMemberKind::Learner => ClusterRole::Learner.as_str(),
            ClusterMemberKind::Unknown => ClusterRole::Unknown.as_str(),
        }
    }
}

/// What `cairn cluster status` prints: the node's `key value` lines, a
/// blank line, then one table row per member under a header, columns
/// aligned (the last one is not padded).
fn render_status(status: &ClusterStatus) -> String {
    let leader = match (status.leader_id, &status.leader_client_address) {
        (Some(id), Some(address)) => format!("{id} {address}"),
        (Some(id), None) => id.to_string(),
        (None, _) => "-".to_owned(),
    };
    let mut out = format!(
        "node_id {}\nclustered {}\nrole {}\nterm {}\nleader {leader}\nlast_log_index {}\nlast_applied_index {}\napplied_position {}\n\n",
        status.node_id,
        status.clustered,
        status.role.as_str(),
        status.term,
        or_dash(status.last_log_index),
        or_dash(status.last_applied_index),
        status.applied_position,
    );
    let header = ["ID", "ROLE", "RAFT", "CLIENT", "MATCHED", "LAG"].map(str::to_owned);
    let rows: Vec<[String; 6]> = std::iter::once(header)
        .chain(status.members.iter().map(|member| {
            [
                member.id.to_string(),
                member_role(status, member).to_owned(),
                or_dash(member.raft_address.as_deref()),
                or_dash(member.client_address.as_deref()),
                or_dash(member.matched_index),
                or_dash(member.lag),
            ]
        }))
        .collect();
    out.push_str(&aligned(&rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, matched_index: Option<u64>, lag: Option<u64>) -> ClusterMember {
        ClusterMember {
            id,
            raft_address: Some(format!("127.0.0.1:{}", 2114 + id)),
            client_address: Some(format!("127.0.0.1:{}", 7069 + id)),
            kind: ClusterMemberKind::Voter,
            matched_index,
            lag,
        }
    }

    #[test]
    fn the_leaders_status_names_every_members_role_and_progress() {
        let status = ClusterStatus {
            node_id: 1,
            clustered: true,
            role: ClusterRole::Leader,
            term: 3,
            leader_id: Some(1),
            leader_client_address: Some("127.0.0.1:7070".into()),
            last_log_index: Some(12),
            last_applied_index: Some(12),
            applied_position: 40,
            members: vec![
                member(1, None, None),
                member(2, Some(12), Some(0)),
                ClusterMember {
                    kind: ClusterMemberKind::Learner,
                    client_address: None,
                    ..member(13, Some(2), Some(10))
                },
            ],
        };
        assert_eq!(
            render_status(&status),
            "node_id 1\nclustered true\nrole leader\nterm 3\nleader 1 127.0.0.1:7070\n\
             last_log_index 12\nlast_applied_index 12\napplied_position 40\n\n\
             ID  ROLE      RAFT            CLIENT          MATCHED  LAG\n\
             1   leader    127.0.0.1:2115  127.0.0.1:7070  -        -\n\
             2   follower  127.0.0.1:2116  127.0.0.1:7071  12       0\n\
             13  learner   127.0.0.1:2127  -               2        10\n"
        );
    }

    #[test]
    fn a_single_node_has_no_leader_nor_log() {
        let status = ClusterStatus {
            node_id: 0,
            clustered: false,
            role: ClusterRole::SingleNode,
            term: 0,
            leader_id: None,
            leader_client_address: None,
            last_log_index: None,
            last_applied_index: None,
            applied_position: 5,
            members: vec![ClusterMember {
                id: 0,
                raft_address: None,
                client_address: None,
                kind: ClusterMemberKind::Voter,
                matched_index: None,
                lag: None,
            }],
        };
        let rendered = render_status(&status);
        assert!(rendered.contains("\nrole single-node\n"), "{rendered}");
        assert!(rendered.contains("\nleader -\n"), "{rendered}");
        assert!(rendered.contains("\napplied_position 5\n"), "{rendered}");
        assert!(
            rendered.ends_with("\n0   single-node  -     -       -        -\n"),
            "{rendered}"
        );
    }

    #[test]
    fn the_cluster_subcommand_parses_with_global_connection_flags() {
        use clap::Parser;
        let cli = crate::commands::Cli::try_parse_from([
            "cairn",
            "--addr",
            "http://h:1",
            "cluster",
            "status",
        ])
        .expect("parses");
        assert!(matches!(
            cli.command,
            Some(crate::commands::Command::Cluster {
                command: ClusterCommand::Status
            })
        ));
        assert_eq!(cli.connect.addr.as_deref(), Some("http://h:1"));
    }

    #[test]
    fn add_and_remove_parse_their_node_and_addresses() {
        use clap::Parser;
        let parse = |arguments: &[&str]| {
            crate::commands::Cli::try_parse_from(arguments).map(|cli| cli.command)
        };
        let added = parse(&[
            "cairn",
            "cluster",
            "add",
            "--node-id",
            "4",
            "--raft",
            "h:7173",
            "--client",
            "h:7073",
        ])
        .expect("parses");
        assert!(matches!(
            added,
            Some(crate::commands::Command::Cluster {
                command: ClusterCommand::Add { node_id: 4, ref raft, ref client, kurrent: None }
            }) if raft == "h:7173" && client == "h:7073"
        ));
        let removed = parse(&["cairn", "cluster", "remove", "--node-id", "2"]).expect("parses");
        assert!(matches!(
            removed,
            Some(crate::commands::Command::Cluster {
                command: ClusterCommand::Remove { node_id: 2 }
            })
        ));
        // A node id and both addresses are required.
        assert!(parse(&["cairn", "cluster", "add", "--node-id", "4"]).is_err());
        assert!(parse(&["cairn", "cluster", "remove"]).is_err());
    }
}
