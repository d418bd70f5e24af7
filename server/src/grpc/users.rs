//! The `cairn.v1.Users` gRPC adapter: takes the caller from the
//! authentication layer, converts the request, calls the engine's
//! [`Users`], maps errors with `status::to_status`. Every permission check and
//! rule is the engine's. The conversions are small and used only here, so
//! they sit at the bottom of this file rather than in `from_proto`/`to_proto`.
//!
//! Passwords and token secrets pass through here in requests and one
//! response; nothing here logs a request.

use std::time::Duration;

use cairn_engine::security::users::{
    IssuedToken, NewToken, NewUser, TokenDetails, UserDetails, UserUpdate, Users,
};
use cairn_engine::{Engine, Error, Escaped, Principal, Role};
use cairn_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::auth;
use super::status::{invalid_argument, to_status};

/// Largest request the service decodes: its largest valid request (a user
/// with a 1 KiB password and full name) is far below it.
pub const USERS_REQUEST_BYTES: usize = 64 * 1024;

/// The service.
#[derive(Clone)]
pub struct UsersService {
    /// The engine; users live in its security.
    engine: Engine,
}

impl UsersService {
    /// The service over `engine`'s users.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    fn users(&self) -> &Users {
        self.engine.security().users()
    }
}

fn status(error: Error) -> Status {
    to_status(&error)
}

#[tonic::async_trait]
impl pb::users_server::Users for UsersService {
    async fn create(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::UserDetails>, Status> {
        let by = auth::principal(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("create_user", user = %Escaped(&request.user));
        async {
            let new = NewUser {
                roles: roles(&request.roles)?,
                name: request.user,
                full_name: request.full_name,
                password: request.password,
            };
            let details = self.users().create_user(&by, new).await.map_err(status)?;
            Ok(Response::new(user_details(details)))
        }
        .instrument(span)
        .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let by = auth::principal(&request)?;
        let user = request.into_inner().user;
        let span = tracing::info_span!("delete_user", user = %Escaped(&user));
        self.users()
            .delete_user(&by, &user)
            .instrument(span)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn disable(
        &self,
        request: Request<pb::DisableUserRequest>,
    ) -> Result<Response<pb::DisableUserResponse>, Status> {
        let by = auth::principal(&request)?;
        let user = request.into_inner().user;
        let span = tracing::info_span!("disable_user", user = %Escaped(&user));
        self.users()
            .disable_user(&by, &user)
            .instrument(span)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DisableUserResponse {}))
    }

    async fn enable(
        &self,
        request: Request<pb::EnableUserRequest>,
    ) -> Result<Response<pb::EnableUserResponse>, Status> {
        let by = auth::principal(&request)?;
        let user = request.into_inner().user;
        let span = tracing::info_span!("enable_user", user = %Escaped(&user));
        self.users()
            .enable_user(&by, &user)
            .instrument(span)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::EnableUserResponse {}))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UserDetails>, Status> {
        let by = auth::principal(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("update_user", user = %Escaped(&request.user));
        async {
            let update = UserUpdate {
                full_name: request.full_name,
                roles: request.roles.map(|list| roles(&list.roles)).transpose()?,
            };
            let details = self
                .users()
                .update_user(&by, &request.user, update)
                .await
                .map_err(status)?;
            Ok(Response::new(user_details(details)))
        }
        .instrument(span)
        .await
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let by = auth::principal(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("change_password", user = %Escaped(&request.user));
        self.users()
            .change_password(
                &by,
                &request.user,
                &request.current_password,
                &request.new_password,
            )
            .instrument(span)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let by = auth::principal(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("reset_password", user = %Escaped(&request.user));
        self.users()
            .reset_password(&by, &request.user, &request.new_password)
            .instrument(span)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ResetPasswordResponse {}))
    }

    async fn list(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let by = auth::principal(&request)?;
        let users = self.users().list_users(&by).map_err(status)?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users.into_iter().map(user_details).collect(),
        }))
    }

    async fn details(
        &self,
        request: Request<pb::UserDetailsRequest>,
    ) -> Result<Response<pb::UserDetails>, Status> {
        let by = auth::principal(&request)?;
        let user = request.into_inner().user;
        let details = self.users().user_details(&by, &user).map_err(status)?;
        Ok(Response::new(user_details(details)))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let by = auth::principal(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("create_token", user = %Escaped(&request.user));
        async {
            let new = NewToken {
                user: (!request.user.is_empty()).then_some(request.user),
                name: request.name,
                expires_in: request.expires_in_seconds.map(Duration::from_secs),
            };
            let IssuedToken { details, token } =
                self.users().create_token(&by, new).await.map_err(status)?;
            Ok(Response::new(pb::CreateTokenResponse {
                token: Some(token_details(details)),
                secret: token,
            }))
        }
        .instrument(span)
        .await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let by = auth::principal(&request)?;
        let user = request.into_inner().user;
        let tokens = self
            .users()
            .list_tokens(&by, (!user.is_empty()).then_some(user.as_str()))
            .map_err(status)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(token_details).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let by = auth::principal(&request)?;
        let id = request.into_inner().id;
        let span = tracing::info_span!("revoke_token", token = %Escaped(&id));
        self.users()
            .revoke_token(&by, &id)
            .instrument(span)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let by = auth::principal(&request)?;
        Ok(Response::new(who_am_i(&by)))
    }
}

/// Role names to roles; an unknown name is INVALID_ARGUMENT.
fn roles(names: &[String]) -> Result<Vec<Role>, Status> {
    names
        .iter()
        .map(|name| {
            Role::parse(name).ok_or_else(|| {
                invalid_argument(format!(
                    "unknown role '{}': use admin or ops",
                    Escaped(name)
                ))
            })
        })
        .collect()
}

fn role_names(roles: &[Role]) -> Vec<String> {
    roles.iter().map(|role| role.name().to_owned()).collect()
}

fn user_details(details: UserDetails) -> pb::UserDetails {
    pb::UserDetails {
        user: details.name,
        full_name: details.full_name,
        roles: role_names(&details.roles),
        disabled: details.disabled,
        created: Some(details.created.into()),
        updated: Some(details.updated.into()),
    }
}

fn token_details(details: TokenDetails) -> pb::TokenDetails {
    pb::TokenDetails {
        id: details.id,
        user: details.user,
        name: details.name,
        created: Some(details.created.into()),
        expires: details.expires.map(Into::into),
        expired: details.expired,
    }
}

fn who_am_i(by: &Principal) -> pb::WhoAmIResponse {
    pb::WhoAmIResponse {
        user: by.name().to_owned(),
        roles: role_names(by.roles()),
        system: by.is_system(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_by_name_and_unknown_ones_are_refused() {
        assert_eq!(
            roles(&["ops".into(), "admin".into()]).unwrap(),
            [Role::Ops, Role::Admin]
        );
        let refused = roles(&["root".into()]).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("root"));
    }

    #[test]
    fn whoami_tells_the_system_from_a_user() {
        let system = who_am_i(&Principal::system());
        assert!(system.system);
        let alice = who_am_i(&Principal::user("alice", [Role::Ops]));
        assert_eq!(
            (alice.user.as_str(), alice.roles.as_slice(), alice.system),
            ("alice", &["ops".to_owned()][..], false)
        );
    }
}
