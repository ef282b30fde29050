// Command athenz-go-driver registers and refreshes one instance at ZTS with Athenz's own Go
// libraries, the ones k8s-athenz-sia is built on (github.com/AthenZ/athenz v1.12.13):
// libs/go/sia/util (GenerateKeyPair, GenerateSvcCertCSR, GenerateX509CSR) for the key and the CSR,
// clients/go/zts (ZTSClient.PostInstanceRegisterInformation, PostInstanceRefreshInformation) for the
// calls. The request shapes come from Athenz's code, not from our reading of it.
//
// Usage: athenz-go-driver <config.json>. It prints one JSON line per step and exits 0; a failed
// step is reported in its line (the test decides what was expected).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/AthenZ/athenz/clients/go/zts"
	"github.com/AthenZ/athenz/libs/go/sia/util"
	"github.com/ardielle/ardielle-go/rdl"
)

// Config is what the test gives the driver.
type Config struct {
	ZtsURL     string `json:"ztsUrl"`     // e.g. https://127.0.0.1:1234/zts/v1
	CaFile     string `json:"caFile"`     // CA of ZTS's server certificate
	Provider   string `json:"provider"`   // e.g. k8s.cluster1.identityd
	Domain     string `json:"domain"`     // Athenz domain
	Service    string `json:"service"`    // Athenz service
	InstanceID string `json:"instanceId"` // the pod UID
	TokenFile  string `json:"tokenFile"`  // the pod-bound service-account token
	DNSSuffix  string `json:"dnsSuffix"`  // the provider's DNS suffix
	PodIP      string `json:"podIp"`      // the pod's IP (k8s-athenz-sia shape only)
	// "athenz-sia": util.GenerateSvcCertCSR (Athenz's own SIAs: instanceid URI, wildcard, instanceid DNS name).
	// "k8s-athenz-sia": util.GenerateX509CSR with k8s-athenz-sia's subject and SANs (no instanceid URI, the pod IP).
	CsrStyle string `json:"csrStyle"`
}

// Result is one printed line.
type Result struct {
	Step        string   `json:"step"`
	OK          bool     `json:"ok"`
	Code        int      `json:"code,omitempty"`
	Error       string   `json:"error,omitempty"`
	Location    string   `json:"location,omitempty"`
	Subject     string   `json:"subject,omitempty"`
	DNSNames    []string `json:"dnsNames,omitempty"`
	IPs         []string `json:"ips,omitempty"`
	URIs        []string `json:"uris,omitempty"`
	Serial      string   `json:"serial,omitempty"`
	RequestBody string   `json:"requestBody,omitempty"`
}

func emit(r Result) {
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

func fail(step string, err error) Result {
	r := Result{Step: step, OK: false, Error: err.Error()}
	if re, ok := err.(rdl.ResourceError); ok {
		r.Code = re.Code
	}
	return r
}

func csrFor(c Config) (string, []byte, error) {
	key, err := util.GenerateKeyPair(2048)
	if err != nil {
		return "", nil, err
	}
	keyPEM := util.GetPEMBlock(key) // PKCS#1 "RSA PRIVATE KEY", as k8s-athenz-sia writes it
	var csr string
	switch c.CsrStyle {
	case "athenz-sia":
		csr, err = util.GenerateSvcCertCSR(key, &util.SvcCertReqOptions{
			Domain:           c.Domain,
			Service:          c.Service,
			CommonName:       c.Domain + "." + c.Service,
			InstanceId:       c.InstanceID,
			Provider:         c.Provider,
			ZtsDomains:       []string{c.DNSSuffix},
			WildCardDnsName:  true,
			InstanceIdSanDNS: true,
		})
	case "k8s-athenz-sia":
		dashed := strings.ReplaceAll(c.Domain, ".", "-")
		spiffe, perr := url.Parse(fmt.Sprintf("spiffe://%s/sa/%s", c.Domain, c.Service))
		if perr != nil {
			return "", nil, perr
		}
		csr, err = util.GenerateX509CSR(key, util.CertReqDetails{
			CommonName: c.Domain + "." + c.Service,
			OrgUnit:    c.Provider,
			IpList:     []string{c.PodIP},
			HostList: []string{
				fmt.Sprintf("%s.%s.%s", c.Service, dashed, c.DNSSuffix),
				fmt.Sprintf("*.%s.%s.%s", c.Service, dashed, c.DNSSuffix),
				fmt.Sprintf("%s.instanceid.athenz.%s", c.InstanceID, c.DNSSuffix),
			},
			URIs: []*url.URL{spiffe},
		})
	default:
		err = fmt.Errorf("unknown csrStyle %q", c.CsrStyle)
	}
	return csr, keyPEM, err
}

func client(c Config, cert *tls.Certificate) (zts.ZTSClient, error) {
	caPEM, err := os.ReadFile(c.CaFile)
	if err != nil {
		return zts.ZTSClient{}, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = cfg
	return zts.NewClient(c.ZtsURL, t), nil
}

func describe(step string, pemText string) Result {
	r := Result{Step: step, OK: true}
	cert, err := util.ParseCertificate(pemText)
	if err != nil {
		return fail(step, err)
	}
	r.Subject = cert.Subject.String()
	r.DNSNames = cert.DNSNames
	for _, ip := range cert.IPAddresses {
		r.IPs = append(r.IPs, ip.String())
	}
	for _, u := range cert.URIs {
		r.URIs = append(r.URIs, u.String())
	}
	r.Serial = cert.SerialNumber.String()
	return r
}

func run(c Config) {
	token, err := os.ReadFile(c.TokenFile)
	if err != nil {
		emit(fail("read-token", err))
		return
	}
	csr, keyPEM, err := csrFor(c)
	if err != nil {
		emit(fail("csr", err))
		return
	}
	zc, err := client(c, nil)
	if err != nil {
		emit(fail("client", err))
		return
	}
	// Exactly k8s-athenz-sia's call (pkg/certificate/identity.go GetX509Cert): the token file's bytes as they are.
	info := &zts.InstanceRegisterInformation{
		Provider:        zts.ServiceName(c.Provider),
		Domain:          zts.DomainName(c.Domain),
		Service:         zts.SimpleName(c.Service),
		AttestationData: string(token),
		Csr:             csr,
	}
	body, _ := json.Marshal(info)
	id, location, err := zc.PostInstanceRegisterInformation(info)
	if err != nil {
		r := fail("register", err)
		r.RequestBody = string(body)
		emit(r)
		return
	}
	r := describe("register", id.X509Certificate)
	r.Location = location
	r.RequestBody = string(body)
	emit(r)

	// Refresh over mutual TLS with CERT_FILE's content: leaf + x509CertificateSigner.
	held, err := tls.X509KeyPair([]byte(id.X509Certificate+id.X509CertificateSigner), keyPEM)
	if err != nil {
		emit(fail("refresh", err))
		return
	}
	csr2, _, err := csrFor(c)
	if err != nil {
		emit(fail("csr", err))
		return
	}
	zc2, err := client(c, &held)
	if err != nil {
		emit(fail("client", err))
		return
	}
	refreshed, err := zc2.PostInstanceRefreshInformation(zts.ServiceName(c.Provider), zts.DomainName(c.Domain), zts.SimpleName(c.Service),
		zts.PathElement(c.InstanceID), &zts.InstanceRefreshInformation{AttestationData: string(token), Csr: csr2})
	if err != nil {
		emit(fail("refresh", err))
		return
	}
	emit(describe("refresh", refreshed.X509Certificate))
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: athenz-go-driver <config.json>")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var c Config
	if err := json.Unmarshal(raw, &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	run(c)
}
