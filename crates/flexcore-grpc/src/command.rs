//! `flexcore.v1.CommandService`.

use flexcore_app::command::Command;
use flexcore_app::security::RouteClass;
use tonic::{Request, Response, Status};

use crate::pb::command_service_server::CommandService;
use crate::pb::{CommandOutcome, SendCommandRequest};
use crate::{Gateway, convert, error};

#[tonic::async_trait]
impl CommandService for Gateway {
    async fn send(
        &self,
        request: Request<SendCommandRequest>,
    ) -> Result<Response<CommandOutcome>, Status> {
        let principal = self.admit(&request, RouteClass::Commands, "CommandService/Send")?;
        let mut ctx = convert::command_context(request.metadata());
        ctx.tenant = principal.as_ref().and_then(|p| p.tenant.clone());
        ctx.principal = principal;
        let request = request.into_inner();
        let payload =
            convert::command_payload(&request.payload_json, self.state.limits.max_json_depth)?;
        // Checked and honoured by the command bus's idempotency decorator, as for HTTP's
        // `Idempotency-Key` header.
        ctx.idempotency_key = request.idempotency_key;
        let command = Command {
            command_type: request.command_type,
            payload,
        };
        let outcome = self
            .state
            .commands
            .send(&ctx, &command)
            .await
            .map_err(error::from_app)?;
        Ok(Response::new(convert::command_outcome(outcome)))
    }
}
