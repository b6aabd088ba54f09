//! `flexcore.v1.QueryService`.

use flexcore_app::query::{Query, QueryContext};
use flexcore_app::security::RouteClass;
use tonic::{Request, Response, Status};

use crate::pb::query_service_server::QueryService;
use crate::pb::{AskRequest, AskResponse};
use crate::{Gateway, convert, error};

#[tonic::async_trait]
impl QueryService for Gateway {
    async fn ask(&self, request: Request<AskRequest>) -> Result<Response<AskResponse>, Status> {
        let principal = self.admit(&request, RouteClass::Queries, "QueryService/Ask")?;
        let ctx = QueryContext {
            tenant: principal.as_ref().and_then(|p| p.tenant.clone()),
            principal,
            min_position: None,
        };
        let request = request.into_inner();
        let params = convert::query_params(&request.params_json, self.state.limits.max_json_depth)?;
        let query = Query {
            query_type: request.query_type,
            params,
        };
        let answer = self
            .state
            .queries
            .ask(&ctx, &query)
            .await
            .map_err(error::from_app)?;
        Ok(Response::new(AskResponse {
            result_json: answer.to_string(),
        }))
    }
}
