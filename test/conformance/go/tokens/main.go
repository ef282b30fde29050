// Command go-tokens drives Athenz's own Go ZTS client (github.com/AthenZ/athenz v1.12.13: clients/go/zts,
// libs/go/athenzutils, libs/go/sia/util) against a ZTS (here the stand-in) for role certificates,
// access tokens and role tokens, decodes every answer with Athenz's models, and compares the role CSR
// our SIA sent with the one k8s-athenz-sia v3.6.0's PrepareRoleCsrOptions would build (same options,
// Go's own x509 encoder).
//
// Usage: go-tokens <config.json>. Prints one JSON line per case and "N passed, N failed"; exits 1 when a
// case fails.
package main

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/AthenZ/athenz/clients/go/zts"
	"github.com/AthenZ/athenz/libs/go/athenzutils"
	siautil "github.com/AthenZ/athenz/libs/go/sia/util"
	"github.com/ardielle/ardielle-go/rdl"
)

type target struct {
	Domain string `json:"domain"`
	Role   string `json:"role"`
}

type config struct {
	ZTS        string `json:"zts"`
	CAFile     string `json:"caFile"`
	CertFile   string `json:"certFile"`
	KeyFile    string `json:"keyFile"`
	Domain     string `json:"domain"`
	Service    string `json:"service"`
	DNSSuffix  string `json:"dnsSuffix"`
	Provider   string `json:"provider"`
	InstanceID string `json:"instanceId"`
	PodIP      string `json:"podIp"`
	// The role everything is asked for, and one the principal is not a member of.
	Role   target `json:"role"`
	Denied target `json:"denied"`
	// Seconds; 0 = ZTS default (what k8s-athenz-sia sends with TOKEN_EXPIRY=0).
	Expiry int `json:"expiry"`
	// The role CSR our SIA sent (captured at the stand-in), to compare with k8s-athenz-sia's.
	OurRoleCsr string `json:"ourRoleCsr"`
}

type result struct {
	Case   string      `json:"case"`
	OK     bool        `json:"ok"`
	Error  string      `json:"error,omitempty"`
	Detail interface{} `json:"detail,omitempty"`
}

var passed, failed int

func report(name string, detail interface{}, err error) {
	r := result{Case: name, OK: err == nil, Detail: detail}
	if err != nil {
		r.Error = err.Error()
		failed++
	} else {
		passed++
	}
	line, _ := json.Marshal(r)
	fmt.Println(string(line))
}

// jwtPart decodes one part of a JWT without verifying it (the TS side verifies the signature).
func jwtPart(token string, i int) (map[string]interface{}, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errors.New("not a JWT")
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[i])
	if err != nil {
		return nil, err
	}
	var m map[string]interface{}
	return m, json.Unmarshal(raw, &m)
}

// expectError checks that err is ZTS's rdl.ResourceError with the code (the Go client's error model).
func expectError(err error, code int, contains string) (interface{}, error) {
	var re rdl.ResourceError
	if !errors.As(err, &re) {
		return nil, fmt.Errorf("expected an rdl.ResourceError, got %T %v", err, err)
	}
	if re.Code != code || !strings.Contains(re.Message, contains) {
		return re, fmt.Errorf("expected %d containing %q, got %d %q", code, contains, re.Code, re.Message)
	}
	return re, nil
}

// k8sAthenzSiaRoleCsrTemplate is the CSR template of k8s-athenz-sia v3.6.0 pkg/certificate/identity.go
// PrepareRoleCsrOptions with the default role certificate subject (OU=Athenz, config/default.go), as its
// third_party/util/crypto.go GenerateCSR turns it into x509.CertificateRequest (SANs in DNS, email, IP, URI order).
func k8sAthenzSiaRoleCsrTemplate(c config) *x509.CertificateRequest {
	spiffe, _ := url.Parse(fmt.Sprintf("spiffe://%s/ra/%s", c.Role.Domain, c.Role.Role))
	t := &x509.CertificateRequest{
		Subject: pkix.Name{
			OrganizationalUnit: []string{"Athenz"},
			CommonName:         fmt.Sprintf("%s:role.%s", c.Role.Domain, c.Role.Role),
		},
		DNSNames:       []string{fmt.Sprintf("%s.%s.%s", c.Service, strings.ReplaceAll(c.Domain, ".", "-"), c.DNSSuffix)},
		EmailAddresses: []string{fmt.Sprintf("%s.%s@%s", c.Domain, c.Service, c.DNSSuffix)},
		URIs:           []*url.URL{spiffe},
	}
	if c.PodIP != "" {
		t.IPAddresses = []net.IP{net.ParseIP(c.PodIP)}
	}
	return t
}

func sanExtension(exts []pkix.Extension) []byte {
	for _, e := range exts {
		if e.Id.Equal([]int{2, 5, 29, 17}) {
			return e.Value
		}
	}
	return nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-tokens <config.json>")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var c config
	if err := json.Unmarshal(raw, &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	// Athenz's own client with the identity as client certificate (athenzutils.ZtsClient, as SIAs build it).
	client, err := athenzutils.ZtsClient(c.ZTS, c.KeyFile, c.CertFile, c.CAFile, false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	// 1. Role certificate with Athenz's own CSR (libs/go/sia/util GenerateRoleCertCSR), PostRoleCertificateRequestExt.
	func() {
		key, err := siautil.PrivateKeyFromFile(c.KeyFile)
		if err != nil {
			report("rolecert: athenz GenerateRoleCertCSR", nil, err)
			return
		}
		csr, err := siautil.GenerateRoleCertCSR(key, &siautil.RoleCertReqOptions{
			Domain:      c.Domain,
			Service:     c.Service,
			RoleName:    fmt.Sprintf("%s:role.%s", c.Role.Domain, c.Role.Role),
			InstanceId:  c.InstanceID,
			Provider:    c.Provider,
			EmailDomain: c.DNSSuffix,
		})
		if err != nil {
			report("rolecert: athenz GenerateRoleCertCSR", nil, err)
			return
		}
		rc, err := client.PostRoleCertificateRequestExt(&zts.RoleCertificateRequest{Csr: csr, ExpiryTime: 60})
		if err != nil {
			report("rolecert: athenz GenerateRoleCertCSR", nil, err)
			return
		}
		block, _ := pem.Decode([]byte(rc.X509Certificate))
		if block == nil {
			report("rolecert: athenz GenerateRoleCertCSR", nil, errors.New("x509Certificate is not PEM"))
			return
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			report("rolecert: athenz GenerateRoleCertCSR", nil, err)
			return
		}
		uris := []string{}
		for _, u := range cert.URIs {
			uris = append(uris, u.String())
		}
		detail := map[string]interface{}{
			"subject": cert.Subject.String(), "uris": uris, "emails": cert.EmailAddresses,
			"minutes": int(cert.NotAfter.Sub(cert.NotBefore).Minutes()), "clientAuthOnly": len(cert.ExtKeyUsage) == 1 && cert.ExtKeyUsage[0] == x509.ExtKeyUsageClientAuth,
		}
		if cert.Subject.CommonName != fmt.Sprintf("%s:role.%s", c.Role.Domain, c.Role.Role) {
			err = fmt.Errorf("CN %q", cert.Subject.CommonName)
		}
		report("rolecert: athenz GenerateRoleCertCSR", detail, err)
	}()

	// 2. Role certificate denied: ZTS's 403 as rdl.ResourceError.
	func() {
		key, err := siautil.PrivateKeyFromFile(c.KeyFile)
		if err != nil {
			report("rolecert: not a member -> 403", nil, err)
			return
		}
		csr, _ := siautil.GenerateRoleCertCSR(key, &siautil.RoleCertReqOptions{
			Domain: c.Domain, Service: c.Service, RoleName: fmt.Sprintf("%s:role.%s", c.Denied.Domain, c.Denied.Role),
			InstanceId: c.InstanceID, Provider: c.Provider, EmailDomain: c.DNSSuffix,
		})
		_, err = client.PostRoleCertificateRequestExt(&zts.RoleCertificateRequest{Csr: csr, ExpiryTime: 60})
		d, e := expectError(err, 403, "is not included in the requested role(s)")
		report("rolecert: not a member -> 403", d, e)
	}()

	// 3. Our SIA's role CSR equals k8s-athenz-sia's: same subject bytes (order, string types) and SAN bytes.
	func() {
		block, _ := pem.Decode([]byte(c.OurRoleCsr))
		if block == nil {
			report("rolecert: our CSR is k8s-athenz-sia's", nil, errors.New("ourRoleCsr is not PEM"))
			return
		}
		ours, err := x509.ParseCertificateRequest(block.Bytes)
		if err == nil {
			err = ours.CheckSignature()
		}
		if err != nil {
			report("rolecert: our CSR is k8s-athenz-sia's", nil, err)
			return
		}
		key, err := siautil.PrivateKeyFromFile(c.KeyFile)
		if err != nil {
			report("rolecert: our CSR is k8s-athenz-sia's", nil, err)
			return
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, k8sAthenzSiaRoleCsrTemplate(c), key)
		if err != nil {
			report("rolecert: our CSR is k8s-athenz-sia's", nil, err)
			return
		}
		theirs, _ := x509.ParseCertificateRequest(der)
		detail := map[string]interface{}{"subject": ours.Subject.String(), "dns": ours.DNSNames, "emails": ours.EmailAddresses, "ips": fmt.Sprint(ours.IPAddresses)}
		switch {
		case !bytes.Equal(ours.RawSubject, theirs.RawSubject):
			err = fmt.Errorf("subject %q differs from k8s-athenz-sia's %q", ours.Subject.String(), theirs.Subject.String())
		case !bytes.Equal(sanExtension(ours.Extensions), sanExtension(theirs.Extensions)):
			err = fmt.Errorf("SANs differ: ours %v %v %v %v, k8s-athenz-sia %v %v %v %v", ours.DNSNames, ours.EmailAddresses, ours.IPAddresses, ours.URIs, theirs.DNSNames, theirs.EmailAddresses, theirs.IPAddresses, theirs.URIs)
		case !bytes.Equal(ours.RawSubjectPublicKeyInfo, theirs.RawSubjectPublicKeyInfo):
			err = errors.New("not the identity's public key")
		case ours.SignatureAlgorithm != theirs.SignatureAlgorithm:
			err = fmt.Errorf("signature algorithm %v, k8s-athenz-sia %v", ours.SignatureAlgorithm, theirs.SignatureAlgorithm)
		}
		report("rolecert: our CSR is k8s-athenz-sia's", detail, err)
	}()

	// 4. Access token with k8s-athenz-sia's request string (athenzutils.GenerateAccessTokenRequestString).
	func() {
		req := athenzutils.GenerateAccessTokenRequestString(c.Role.Domain, c.Service, c.Role.Role, "", "", "", c.Expiry)
		at, err := client.PostAccessTokenRequest(zts.AccessTokenRequest(req))
		if err != nil {
			report("accesstoken: PostAccessTokenRequest", map[string]string{"request": req}, err)
			return
		}
		header, err := jwtPart(at.Access_token, 0)
		var claims map[string]interface{}
		if err == nil {
			claims, err = jwtPart(at.Access_token, 1)
		}
		detail := map[string]interface{}{"request": req, "token_type": at.Token_type, "expires_in": at.Expires_in, "scope": at.Scope, "id_token": at.Id_token != "", "header": header, "claims": claims}
		if err == nil && (at.Token_type != "Bearer" || at.Expires_in == nil || claims["aud"] != c.Role.Domain || header["typ"] != "at+jwt") {
			err = fmt.Errorf("unexpected answer %+v", detail)
		}
		report("accesstoken: PostAccessTokenRequest", detail, err)
	}()

	// 5. Access token for a whole domain: ZTS sends the scope back.
	func() {
		req := athenzutils.GenerateAccessTokenRequestString(c.Role.Domain, "", "", "", "", "", 600)
		at, err := client.PostAccessTokenRequest(zts.AccessTokenRequest(req))
		var detail interface{}
		if err == nil {
			detail = map[string]interface{}{"request": req, "scope": at.Scope, "expires_in": *at.Expires_in}
			if at.Scope == "" || *at.Expires_in != 600 {
				err = fmt.Errorf("unexpected answer %+v", detail)
			}
		}
		report("accesstoken: domain scope", detail, err)
	}()

	// 6. Access token denied, unknown domain.
	func() {
		_, err := client.PostAccessTokenRequest(zts.AccessTokenRequest(athenzutils.GenerateAccessTokenRequestString(c.Denied.Domain, c.Service, c.Denied.Role, "", "", "", 0)))
		d, e := expectError(err, 403, "is not included in the requested role(s)")
		report("accesstoken: not a member -> 403", d, e)
		_, err = client.PostAccessTokenRequest(zts.AccessTokenRequest(athenzutils.GenerateAccessTokenRequestString("no-such-domain", "", "r", "", "", "", 0)))
		d, e = expectError(err, 404, "No such domain")
		report("accesstoken: unknown domain -> 404", d, e)
		_, err = client.PostAccessTokenRequest(zts.AccessTokenRequest("grant_type=password&scope=x%3Adomain"))
		d, e = expectError(err, 400, "Invalid grant request")
		report("accesstoken: bad grant -> 400", d, e)
	}()

	// 7. Role token (GetRoleToken), as k8s-athenz-sia asks for it (minExpiryTime only when set).
	func() {
		var min *int32
		if c.Expiry > 0 {
			m := int32(c.Expiry)
			min = &m
		}
		rt, err := client.GetRoleToken(zts.DomainName(c.Role.Domain), zts.EntityList(c.Role.Role), min, nil, "")
		var detail interface{}
		if err == nil {
			detail = map[string]interface{}{"prefix": strings.SplitN(rt.Token, ";a=", 2)[0], "expiryTime": rt.ExpiryTime}
			want := fmt.Sprintf("v=Z1;d=%s;r=%s;p=%s.%s;", c.Role.Domain, c.Role.Role, c.Domain, c.Service)
			if !strings.HasPrefix(rt.Token, want) || rt.ExpiryTime <= time.Now().Unix() || !strings.Contains(rt.Token, ";s=") {
				err = fmt.Errorf("unexpected role token %v", detail)
			}
		}
		report("roletoken: GetRoleToken", detail, err)
		_, err = client.GetRoleToken(zts.DomainName(c.Denied.Domain), zts.EntityList(c.Denied.Role), nil, nil, "")
		d, e := expectError(err, 403, "is not included in the requested role(s)")
		report("roletoken: not a member -> 403", d, e)
	}()

	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
