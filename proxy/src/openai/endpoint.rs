//! The API's endpoint table: method, path (after the route's prefix) and
//! content type to an [`Endpoint`], or the error that names what is wrong.

use super::error::ApiError;

/// Whether a `content-type` is JSON: `application/json`, any case, parameters
/// (`; charset=utf-8`) allowed.
fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|v| {
        let essence = v.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
    })
}

/// One endpoint of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /models`
    ListModels,
    /// `GET /models/{id}`
    GetModel(String),
    /// `POST /chat/completions`
    ChatCompletions,
    /// `POST /completions`
    Completions,
    /// `POST /embeddings`
    Embeddings,
}

impl Endpoint {
    /// The endpoint `method` and `path` name on a route whose prefix is
    /// `prefix` (`/` for none). POSTs must declare a JSON body: a web page
    /// cannot send that without a CORS preflight, so it cannot drive a
    /// gateway on localhost.
    pub fn find(
        method: &http::Method,
        path: &str,
        prefix: &str,
        content_type: Option<&str>,
    ) -> Result<Endpoint, ApiError> {
        let rest = if prefix == "/" {
            path
        } else {
            path.strip_prefix(prefix).unwrap_or("")
        };
        let rest = rest.trim_end_matches('/');
        let (endpoint, allowed) = match rest {
            "/models" => (Endpoint::ListModels, http::Method::GET),
            m if m.starts_with("/models/") => (
                Endpoint::GetModel(m["/models/".len()..].to_string()),
                http::Method::GET,
            ),
            "/chat/completions" => (Endpoint::ChatCompletions, http::Method::POST),
            "/completions" => (Endpoint::Completions, http::Method::POST),
            "/embeddings" => (Endpoint::Embeddings, http::Method::POST),
            _ => return Err(ApiError::unknown_url(method.as_str(), path)),
        };
        if *method != allowed {
            return Err(ApiError::method_not_allowed(
                method.as_str(),
                path,
                allowed.as_str(),
            ));
        }
        if endpoint.takes_body() && !is_json(content_type) {
            return Err(ApiError::unsupported_media_type(content_type));
        }
        Ok(endpoint)
    }

    /// Whether the endpoint reads a JSON body.
    pub fn takes_body(&self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_endpoint_and_what_is_wrong() {
        let json = Some("application/json");
        let get = &http::Method::GET;
        let post = &http::Method::POST;
        assert_eq!(
            Endpoint::find(post, "/v1/chat/completions", "/v1", json),
            Ok(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::find(get, "/models/m-1/", "/", None),
            Ok(Endpoint::GetModel("m-1".into()))
        );
        assert_eq!(
            Endpoint::find(get, "/v1/models", "/v1", None),
            Ok(Endpoint::ListModels)
        );
        let status = |r: Result<Endpoint, ApiError>| r.unwrap_err().status;
        assert_eq!(
            status(Endpoint::find(get, "/v1/embeddings", "/v1", json)),
            405
        );
        assert_eq!(
            status(Endpoint::find(
                post,
                "/v1/embeddings",
                "/v1",
                Some("text/plain")
            )),
            415
        );
        assert_eq!(
            status(Endpoint::find(post, "/v1/nothing", "/v1", json)),
            404
        );
    }
}
