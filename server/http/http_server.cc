#include "http/http_server.h"

#include <atomic>
#include <chrono>
#include <optional>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "http/http_request.h"

namespace dsv3::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

// One connection: plain (beast::tcp_stream) or TLS (TlsStream, handshake first). Every
// phase, the TLS handshake included, runs under the request timeout.
template <class Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
 public:
  Session(Stream stream, const HttpHandler& handler, const HttpLimits& limits, std::atomic<int>& open)
      : stream_(std::move(stream)), handler_(handler), limits_(limits), open_(open) {
    ++open_;
  }
  ~Session() { --open_; }

  void Start() {
    Tcp().expires_after(limits_.request_timeout);
    if constexpr (std::is_same_v<Stream, TlsStream>) {
      stream_.async_handshake(asio::ssl::stream_base::server, [self = this->shared_from_this()](beast::error_code ec) {
        if (ec) return self->Close();
        self->Read();
      });
    } else {
      Read();
    }
  }

 private:
  beast::tcp_stream& Tcp() { return beast::get_lowest_layer(stream_); }

  void Read() {
    parser_.emplace();
    LimitParser(*parser_, limits_);
    // The whole request must arrive within the timeout (slowloris).
    Tcp().expires_after(limits_.request_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (ec) {
      if (const int refusal = RefusalStatus(ec); refusal == 431 || refusal == 413) {
        Reply(static_cast<http::status>(refusal), "request too large\n", false);
        return;
      }
      Close();
      return;
    }
    auto& req = parser_->get();
    const bool keep_alive = req.keep_alive();
    if (RefusalStatus(req) == 405) {
      Reply(http::status::method_not_allowed, "only GET, HEAD and POST\n", false);
      return;
    }
    HttpResponse r;
    try {
      r = handler_(ToHttpRequest(req));
    } catch (const std::exception& e) {
      r = {500, "text/plain; charset=utf-8", std::string("error: ") + e.what() + "\n", {}};
    }
    Reply(static_cast<http::status>(r.status), std::move(r.body), keep_alive, r.content_type,
          req.method() == http::verb::head, r.headers);
  }

  void Reply(http::status status, std::string body, bool keep_alive,
             const std::string& content_type = "text/plain; charset=utf-8", bool head = false,
             const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    auto res = std::make_shared<http::response<http::string_body>>(status, 11);
    res->set(http::field::server, "dsv3d");
    res->set(http::field::content_type, content_type);
    for (const auto& [name, value] : headers) res->insert(name, value);
    res->keep_alive(keep_alive);
    const size_t size = body.size();
    if (!head) res->body() = std::move(body);
    res->content_length(size);
    Tcp().expires_after(limits_.request_timeout);
    http::async_write(stream_, *res,
                      [self = this->shared_from_this(), res, keep_alive](beast::error_code ec, size_t) {
                        if (ec || !keep_alive) {
                          self->Close();
                          return;
                        }
                        self->Read();
                      });
  }

  void Close() {
    beast::error_code ignored;
    Tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
  }

  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<RequestParser> parser_;
  const HttpHandler& handler_;
  const HttpLimits& limits_;
  std::atomic<int>& open_;
};

class BeastServer final : public HttpServer {
 public:
  BeastServer(const HttpLimits& limits, HttpHandler handler)
      : limits_(limits), handler_(std::move(handler)), acceptor_(io_) {}
  ~BeastServer() override { Stop(); }

  absl::Status UseTls(const HttpTls& tls) {
    tls_.emplace(asio::ssl::context::tls_server);
    beast::error_code ec;
    tls_->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                      asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 | asio::ssl::context::no_tlsv1_1);
    tls_->use_certificate_chain_file(tls.cert, ec);
    if (!ec) tls_->use_private_key_file(tls.key, asio::ssl::context::pem, ec);
    if (ec) {
      return absl::InvalidArgumentError("--http-tls: cannot load " + tls.cert + " / " + tls.key + ": " + ec.message());
    }
    if (!tls.client_ca.empty()) {
      tls_->load_verify_file(tls.client_ca, ec);
      if (ec) return absl::InvalidArgumentError("--tls-client-ca: cannot load " + tls.client_ca + ": " + ec.message());
      tls_->set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
    }
    return absl::OkStatus();
  }

  absl::Status Bind(const std::string& host, int port) {
    beast::error_code ec;
    const auto addr = asio::ip::make_address(host, ec);
    if (ec) return absl::InvalidArgumentError("--http-listen: '" + host + "' is not an IP address");
    const tcp::endpoint ep(addr, static_cast<unsigned short>(port));
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      return absl::UnavailableError("cannot listen on " + host + ":" + std::to_string(port) + " for HTTP: " +
                                    ec.message());
    }
    port_ = acceptor_.local_endpoint().port();
    Accept();
    thread_ = std::thread([this] { io_.run(); });
    return absl::OkStatus();
  }

  int port() const override { return port_; }

  void Stop() override {
    if (stopped_.exchange(true)) return;
    asio::post(io_, [this] {
      beast::error_code ignored;
      acceptor_.close(ignored);
    });
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Accept() {
    acceptor_.async_accept(asio::make_strand(io_), [this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec && open_.load() < limits_.max_connections) {
        if (tls_) {
          std::make_shared<Session<TlsStream>>(TlsStream(std::move(socket), *tls_), handler_, limits_, open_)->Start();
        } else {
          std::make_shared<Session<beast::tcp_stream>>(beast::tcp_stream(std::move(socket)), handler_, limits_, open_)
              ->Start();
        }
      }  // else the socket closes here: too many connections are open
      Accept();
    });
  }

  const HttpLimits limits_;
  HttpHandler handler_;
  std::optional<asio::ssl::context> tls_;
  std::atomic<int> open_{0};
  asio::io_context io_{1};
  tcp::acceptor acceptor_;
  std::thread thread_;
  std::atomic<bool> stopped_{false};
  int port_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> StartHttpServer(const std::string& host, int port, const HttpLimits& limits,
                                                            const std::optional<HttpTls>& tls, HttpHandler handler) {
  auto server = std::make_unique<BeastServer>(limits, std::move(handler));
  if (tls) {
    if (absl::Status s = server->UseTls(*tls); !s.ok()) return s;
  }
  if (absl::Status s = server->Bind(host, port); !s.ok()) return s;
  return std::unique_ptr<HttpServer>(std::move(server));
}

}  // namespace dsv3::server
