// The web room's request parsing: queries, cookies, tokens, job paths, and the HTTP status of
// each gRPC code the API passes on.
#include <gtest/gtest.h>

#include "web/api.h"
#include "web/request_parts.h"

namespace dsv3::server::web {
namespace {

TEST(WebRequest, QueriesDecodeAndKeepRepeatedNames) {
  const Query q = ParseQuery("/api/v1/jobs/3/metrics?name=loss&name=val_loss&since_step=5&x&owner=a%20b+c&bad=%zz");
  ASSERT_EQ(q.at("name").size(), 2u);
  EXPECT_EQ(q.at("name")[0], "loss");
  EXPECT_EQ(q.at("name")[1], "val_loss");
  EXPECT_EQ(q.at("x"), std::vector<std::string>{""});
  EXPECT_EQ(q.at("owner")[0], "a b c");
  EXPECT_EQ(q.at("bad")[0], "%zz");  // a malformed escape is kept as sent
  EXPECT_TRUE(ParseQuery("/api/v1/jobs").empty());
  EXPECT_EQ(PathOf("/api/v1/jobs?state=RUNNING"), "/api/v1/jobs");
  EXPECT_EQ(PercentDecode("%2Fetc%2fpasswd%"), "/etc/passwd%");
}

TEST(WebRequest, IntegerParametersNameTheParameterAndTheRange) {
  const Query q = ParseQuery("/x?tail=20&limit=abc&big=99999999999999999999&neg=-3");
  EXPECT_EQ(*IntParam(q, "tail", 200, 1, 10000), 20);
  EXPECT_EQ(*IntParam(q, "absent", 200, 1, 10000), 200);
  EXPECT_EQ(IntParam(q, "limit", 100, 1, 10000).status().message(),
            "query parameter 'limit': 'abc' is not an integer in [1, 10000]");
  EXPECT_FALSE(IntParam(q, "big", 0, 0, INT64_MAX).ok());
  EXPECT_FALSE(IntParam(q, "neg", 0, 0, 10).ok());
  EXPECT_EQ(*IntParam(q, "neg", 0, -5, 10), -3);
}

TEST(WebRequest, TokensComeFromTheBearerHeaderOrTheLoginCookie) {
  EXPECT_EQ(CookieValue("a=1; dsv3_token=dsv3u_ab; b=2", "dsv3_token"), "dsv3u_ab");
  EXPECT_EQ(CookieValue("xdsv3_token=1;dsv3_token=\"q\"", "dsv3_token"), "q");
  EXPECT_EQ(CookieValue("a=1", "dsv3_token"), "");
  EXPECT_EQ(**TokenOf("Bearer dsv3u_12", "dsv3_token=dsv3u_34"), "dsv3u_12");  // the header wins
  EXPECT_EQ(**TokenOf("", "dsv3_token=dsv3u_34"), "dsv3u_34");
  EXPECT_FALSE(TokenOf("", "other=1")->has_value());
  EXPECT_EQ(TokenOf("Basic abc", "").status().code(), absl::StatusCode::kUnauthenticated);
  // Characters no token has never reach gRPC metadata.
  EXPECT_EQ(TokenOf("", "dsv3_token=a\r\nb").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_FALSE(TokenOf("Bearer " + std::string(300, 'a'), "").ok());
}

TEST(WebRequest, JobPathsAndStatuses) {
  const auto j = ParseJobPath("/api/v1/jobs/12/metrics", "/api/v1/jobs/");
  ASSERT_TRUE(j.has_value());
  EXPECT_EQ(j->id, 12);
  EXPECT_EQ(j->rest, "metrics");
  EXPECT_EQ(ParseJobPath("/jobs/7", "/jobs/")->rest, "");
  EXPECT_FALSE(ParseJobPath("/jobs/x7", "/jobs/").has_value());
  EXPECT_FALSE(ParseJobPath("/jobs/0", "/jobs/").has_value());
  EXPECT_FALSE(ParseJobPath("/jobs/-1", "/jobs/").has_value());
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::UNAUTHENTICATED), 401);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::PERMISSION_DENIED), 403);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::NOT_FOUND), 404);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::INVALID_ARGUMENT), 400);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::FAILED_PRECONDITION), 400);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::UNAVAILABLE), 503);
  EXPECT_EQ(HttpStatusFor(grpc::StatusCode::INTERNAL), 500);
}

}  // namespace
}  // namespace dsv3::server::web
